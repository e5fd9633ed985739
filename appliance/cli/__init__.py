"""`vaq-peer`, the one command line of the appliance (the console script is `main`).

    main       the parser, the offline SoT commands (validate, plan, render), serve, demo
    exits      the exit codes every command returns, in one table
    client     the REST client the commands that talk to a running peer use
    peer       those commands: status, hosts, host, revisions, approve, arm, events...
    rollout    rollout and its --follow view
    federation the cross-site commands
    doctor     doctor: checks a peer (and the boot network) and says what is wrong
    init       init: a peer's config and secrets from the SoT
    lab        lab: the virtual datacenter, from a checkout
    importer   import: an original Vaquero SoT converted to ours
    demo       demo: the bundled lab site, end to end in one process
"""

from .main import main

__all__ = ["main"]
