"""Federation: sites that know each other through signed summaries (summary.py, keys.py,
verify.py), exchanged and relayed between sites (exchange.py), a cross-site rollout order
(gate.py), and the peer's side of it all (service.py)."""
