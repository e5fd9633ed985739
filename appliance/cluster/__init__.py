"""The peer group's replicated state (pysyncobj) and its bridge to asyncio.

pysyncobj <= 0.3.17 replaces `socket.inet_ntop` for the whole process with a Windows-only
implementation when it is imported (`pysyncobj/win_inet_pton.py` assigns it outside its
`os.name == 'nt'` guard), which breaks every later caller on Linux, scapy among them. This
package init runs before any of our modules import pysyncobj, and puts the real one back.
"""

import _socket
import socket

import pysyncobj.win_inet_pton  # noqa: F401 - import it first so the damage is done and undone

socket.inet_ntop = _socket.inet_ntop
