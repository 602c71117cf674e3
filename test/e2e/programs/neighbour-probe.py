# Asks the segment who has an IPv4 and an IPv6 address, again and again, and prints every answer
# with the MAC it came from: a broadcast ARP request and a neighbour solicitation (to the address's
# solicited-node group, with this host's link-layer address) every interval, read back through a
# packet socket, so that two nodes answering for one address both show.
# Usage: python3 neighbour-probe.py <device> <own IPv4> <own IPv6> <IPv4> <IPv6> <interval ms>
# Prints {"ready": true}, then one line per answer: {"at": ms on CLOCK_MONOTONIC, "family": 4|6, "mac": "..."}.
import json
import select
import socket
import struct
import sys
import time

device, own4, own6, target4, target6 = sys.argv[1:6]
interval = int(sys.argv[6]) / 1000
ETH_P_ALL, ETH_P_ARP, ETH_P_IPV6 = 0x0003, 0x0806, 0x86DD
PACKET_OUTGOING = 4

sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
sock.bind((device, 0))
mac = sock.getsockname()[4]
addr4, own4b = socket.inet_aton(target4), socket.inet_aton(own4)
addr6, own6b = socket.inet_pton(socket.AF_INET6, target6), socket.inet_pton(socket.AF_INET6, own6)

arp_request = (
    b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + own4b + b"\x00" * 6 + addr4
)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


group = socket.inet_pton(socket.AF_INET6, "ff02::1:ff00:0")[:13] + addr6[13:]
icmp = struct.pack("!BBHI", 135, 0, 0, 0) + addr6 + struct.pack("!BB", 1, 1) + mac
pseudo = own6b + group + struct.pack("!I3xB", len(icmp), 58)
icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
solicitation = (
    b"\x33\x33" + group[12:] + mac + struct.pack("!H", ETH_P_IPV6)
    + struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + own6b + group + icmp
)


def answer(frame: bytes):
    kind = struct.unpack("!H", frame[12:14])[0]
    if kind == ETH_P_ARP and frame[20:22] == b"\x00\x02" and frame[28:32] == addr4:
        return 4
    if kind == ETH_P_IPV6 and frame[20] == 58 and frame[54] == 136 and frame[62:78] == addr6:
        return 6
    return None


print(json.dumps({"ready": True}), flush=True)
next_probe = time.monotonic()
while True:
    now = time.monotonic()
    if now >= next_probe:
        sock.send(arp_request)
        sock.send(solicitation)
        next_probe = now + interval
    if not select.select([sock], [], [], max(0, next_probe - now))[0]:
        continue
    frame, address = sock.recvfrom(2048)
    family = address[2] != PACKET_OUTGOING and answer(frame)
    if family:
        sender = ":".join(f"{b:02x}" for b in frame[6:12])
        print(json.dumps({"at": time.monotonic() * 1000, "family": family, "mac": sender}), flush=True)
