# Holds every packet routed into a new TUN device for a fixed time, then hands it back to the
# kernel, which routes it on: a delay for kernels built without netem.
# Usage: python3 delay.py <device> <milliseconds>; prints "ready" once the device exists.
import asyncio
import fcntl
import os
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

device, delay = sys.argv[1], int(sys.argv[2]) / 1000
tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
loop = asyncio.new_event_loop()


def hold():
    while True:
        try:
            packet = os.read(tun, 65536)
        except BlockingIOError:
            return
        loop.call_later(delay, os.write, tun, packet)


loop.add_reader(tun, hold)
print("ready", flush=True)
loop.run_forever()
