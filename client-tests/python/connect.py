"""A python-socketio client, as the product's Python tools connect: polling, then the
upgrade to websocket. Prints one JSON line: the transport it ended on and the ack of
join_room, or the connect error.

Usage: connect.py URL TOKEN ROOM
"""
import json
import sys
import time

import socketio

url, token, room = sys.argv[1:4]
client = socketio.Client(reconnection=False)
result = {}
try:
    client.connect(url, auth={"token": token}, transports=["polling", "websocket"], wait_timeout=5)
    # The upgrade runs after the connect; give it time to finish or fail.
    deadline = time.time() + 5
    while client.transport() != "websocket" and time.time() < deadline:
        time.sleep(0.05)
    result["transport"] = client.transport()
    result["ack"] = client.call("join_room", room, timeout=5)
except Exception as e:  # reported to the test, which decides
    result["error"] = f"{type(e).__name__}: {e}"
finally:
    client.disconnect()
print(json.dumps(result), flush=True)
