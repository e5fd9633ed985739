"""The exit codes of every `vaq-peer` command, in one table, so a script can tell what kind
of failure it met. The offline commands use 0, 1 and 2; the commands that talk to a running
peer add 3, 4 and 5. An invalid SoT and a failed check are the same code (1): either way the
thing asked about is not in the state the caller wanted, and the output says which."""

EXIT_OK = 0  # done; the SoT is valid; the check passed
EXIT_FAILED = 1  # a failed check or action, a failed rollout, open import questions
EXIT_INVALID = EXIT_FAILED  # the SoT (or a revision of it) does not validate
EXIT_USAGE = 2  # bad arguments, bad config, a missing path, revision or token file
EXIT_UNREACHABLE = 3  # no peer answered at the URL
EXIT_AUTH = 4  # the peer refused the token
EXIT_NO_QUORUM = 5  # the peer answered but its cluster has no quorum (or no leader)
EXIT_INTERRUPTED = 130  # Ctrl-C during a --follow or --wait (128 + SIGINT, as shells do)

__all__ = ["EXIT_AUTH", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_INVALID", "EXIT_NO_QUORUM",
           "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE"]
