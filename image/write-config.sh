#!/usr/bin/env bash
# Writes a directory's files onto the config partition (vaq-config, FAT) of an appliance disk
# image or of the flashed disk, without mounting anything (mtools at the partition's offset).
#
#   image/write-config.sh DISK DIR     DISK: vaquero.img or /dev/sdX; DIR: peer.yaml, secrets/,
#                                      authorized_keys, network/*.network
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DISK DIR" >&2; exit 2; }
disk=$1 dir=$2
[ -f "$dir/peer.yaml" ] || echo "write-config: note: $dir has no peer.yaml" >&2
start=$(sfdisk --json "$disk" | python3 -c '
import json, sys
parts = json.load(sys.stdin)["partitiontable"]["partitions"]
print(next(p["start"] for p in parts if p.get("name") == "vaq-config"))')
img="$disk@@$((start * 512))"
shopt -s nullglob dotglob
files=("$dir"/*)
[ ${#files[@]} -gt 0 ] || { echo "write-config: $dir is empty" >&2; exit 2; }
MTOOLS_SKIP_CHECK=1 mcopy -o -s -i "$img" "${files[@]}" ::/
MTOOLS_SKIP_CHECK=1 mdir -/ -b -i "$img" ::/
