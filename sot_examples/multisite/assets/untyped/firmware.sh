#!/bin/bash
# {{ host.name }} ({{ host.metadata.model }}, serial {{ host.serial }}): firmware baseline check.
# Flashes BIOS / NIC firmware older than the site baseline, then reports the stage.
{% include "snippets/common.sh" %}
{% set want = boot.metadata.baseline[host.metadata.model] -%}
MODEL={{ host.metadata.model | tojson }}
WANT_BIOS={{ want.bios | string | tojson }}
WANT_NIC={{ want.nic | string | tojson }}

have_bios=$(dmidecode -s bios-version)
log "BIOS $have_bios, baseline $WANT_BIOS"
if [ "$(printf '%s\n%s\n' "$WANT_BIOS" "$have_bios" | sort -V | head -n1)" != "$WANT_BIOS" ]; then
    log "flashing BIOS $WANT_BIOS"
    fwupdtool --no-reboot-check install "/opt/firmware/$MODEL/bios-$WANT_BIOS.cab" || fail "BIOS flash"
fi

nic=$(ip -o link | awk -v mac={{ interface.mac | tojson }} '$0 ~ mac {sub(":", "", $2); print $2}')
have_nic=$(ethtool -i "$nic" | awk '/^firmware-version/ {print $2}')
log "NIC $nic firmware $have_nic, baseline $WANT_NIC"
if [ "$(printf '%s\n%s\n' "$WANT_NIC" "$have_nic" | sort -V | head -n1)" != "$WANT_NIC" ]; then
    log "flashing NIC firmware $WANT_NIC"
    /opt/firmware/mlxup --yes --online -i "/opt/firmware/nic-$WANT_NIC.bin" || fail "NIC flash"
fi

phone_home
log "done; the next stage reboots this host"
