"""The repair that importing pysyncobj needs: every module that imports pysyncobj imports
this one too (beside it: nothing calls `inet_ntop` in between).

pysyncobj <= 0.3.17 replaces `socket.inet_ntop` for the whole process with a Windows-only
implementation when it is imported (`pysyncobj/win_inet_pton.py` assigns it outside its
`os.name == 'nt'` guard), which breaks every later caller on Linux, scapy among them. The
modules of this package that need pysyncobj (`raft`, `bridge`) import this one with it, so
the damage is done and undone at once; the pure modules (`commands`, `state`, `errors`) never
import pysyncobj at all.
"""

import _socket
import socket

import pysyncobj
import pysyncobj.win_inet_pton  # noqa: F401

socket.inet_ntop = _socket.inet_ntop
