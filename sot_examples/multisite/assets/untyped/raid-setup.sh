#!/bin/bash
# {{ host.name }} ({{ host.metadata.model }}, {{ host.metadata.raid.controller }}): boot RAID
# and data disks for Ceph. Idempotent: an existing boot volume of the right shape is kept.
{% include "snippets/common.sh" %}
CONTROLLER={{ host.metadata.raid.controller | tojson }}
BOOT_DISKS={{ host.metadata.raid.boot_slots | join(",") | tojson }}
LEVEL={{ boot.metadata.boot_raid_level }}

case "$CONTROLLER" in
  PERC*)
    cli=/opt/perccli/perccli64
    if ! $cli /c0/v0 show | grep -q "RAID$LEVEL"; then
        log "creating RAID$LEVEL boot volume on slots $BOOT_DISKS"
        $cli /c0/vall delete force || true
        $cli /c0 add vd type=raid$LEVEL drives=32:$BOOT_DISKS name=os || fail "create boot volume"
    fi
    {% if boot.metadata.data_disks_mode == "passthrough" %}$cli /c0/eall/sall set jbod || true{% endif %}
    ;;
  "HPE Smart Array"*)
    cli=/opt/ssacli/ssacli
    if ! $cli ctrl slot=0 ld 1 show | grep -q "RAID $LEVEL"; then
        log "creating RAID $LEVEL boot volume on bays $BOOT_DISKS"
        $cli ctrl slot=0 create type=ld drives=$BOOT_DISKS raid=$LEVEL || fail "create boot volume"
    fi
    # Smart Array in mixed mode (the default since Gen10): drives outside a logical drive
    # are already presented to the OS as-is, nothing to do for the data disks.
    ;;
  *)
    fail "no RAID recipe for controller $CONTROLLER"
    ;;
esac

log "data disks: {{ host.metadata.disks.data | length }} x {{ host.metadata.disks.data_size }}"
phone_home
