// The strict-mode stamping library, preloaded into every program of a pod (LD_PRELOAD, set by the
// admission webhook). Before an IPv4 or IPv6 socket connects, it writes the program's stamp into
// the socket's DSCP bits (IP_TOS, IPV6_TCLASS), so that every packet of the flow, the first SYN
// included, tells the gateway which application sent it. The stamp comes from the pod's NAA driver
// (the sidecar, or the node agent of a node-driven pod), asked once per process over a Unix socket
// in the folder the pod's containers share; the driver answers only after the gateway has confirmed
// it classifies that stamp. If the driver does not answer within the bound
// (NAAT_STAMP_TIMEOUT_MS, 3000 by default: the first connection of a new application waits for
// the gateway to classify it, which on a busy gateway takes over a second) the socket goes
// unstamped and its flow is handled as in Observe mode. Programs that do not load shared libraries (static binaries) are never
// stamped. Build: gcc -O2 -shared -fPIC -o libnaat_stamp.so naat_stamp.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t asked_by = 0;
static int stamp = 0;

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

// Asks the driver for this process's stamp: sends "<pid> <pid namespace>\n" (the node agent, in the
// host's process namespace, finds the process by both), reads "<stamp>\n". 0 on any failure.
static int ask(connect_fn real_connect) {
  const char *path = getenv("NAAT_STAMP_SOCKET");
  const char *timeout_text = getenv("NAAT_STAMP_TIMEOUT_MS");
  long timeout = timeout_text ? atol(timeout_text) : 3000;
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  snprintf(address.sun_path, sizeof address.sun_path, "%s", path ? path : "/var/run/naat/stamp.sock");

  int saved_errno = errno;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int result = 0;
  if (fd < 0) goto out;
  if (real_connect(fd, (struct sockaddr *)&address, sizeof address) != 0) goto out;
  char namespace[48] = "";
  ssize_t namespace_length = readlink("/proc/self/ns/pid", namespace, sizeof namespace - 1);
  namespace[namespace_length > 0 ? namespace_length : 0] = '\0';
  char line[80];
  int length = namespace_length > 0 ? snprintf(line, sizeof line, "%d %s\n", (int)getpid(), namespace)
                                     : snprintf(line, sizeof line, "%d\n", (int)getpid());
  if (write(fd, line, length) != length) goto out;

  long deadline = now_ms() + timeout;
  size_t got = 0;
  while (got < sizeof line - 1) {
    long left = deadline - now_ms();
    struct pollfd ready = {.fd = fd, .events = POLLIN};
    if (left <= 0 || poll(&ready, 1, (int)left) <= 0) goto out;
    ssize_t n = read(fd, line + got, sizeof line - 1 - got);
    if (n <= 0) goto out;
    got += n;
    line[got] = '\0';
    if (strchr(line, '\n')) break;
  }
  int value = atoi(line);
  if (value >= 1 && value <= 63) result = value;
out:
  if (fd >= 0) close(fd);
  errno = saved_errno;
  return result;
}

int connect(int fd, const struct sockaddr *address, socklen_t length) {
  static connect_fn real_connect;
  if (!real_connect) real_connect = (connect_fn)dlsym(RTLD_NEXT, "connect");
  if (address && (address->sa_family == AF_INET || address->sa_family == AF_INET6)) {
    pthread_mutex_lock(&lock);
    // A forked child asks again: it may exec into another program without this library's state.
    if (asked_by != getpid()) {
      stamp = ask(real_connect);
      asked_by = getpid();
    }
    int mine = stamp;
    pthread_mutex_unlock(&lock);
    if (mine) {
      int saved_errno = errno;
      int tos = mine << 2; // DSCP is the upper six bits; the two ECN bits stay the kernel's.
      // An IPv6 socket may reach IPv4 peers (mapped addresses): both fields are set.
      setsockopt(fd, IPPROTO_IP, IP_TOS, &tos, sizeof tos);
      if (address->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_TCLASS, &tos, sizeof tos);
      errno = saved_errno;
    }
  }
  return real_connect(fd, address, length);
}
