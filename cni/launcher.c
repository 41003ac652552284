/* netplane-bridge on a node: a static launcher that forwards the CNI call to the node agent.

   The container runtime executes this file from its CNI bin dir. It needs nothing on the host
   (no Python, no netplane): it hands the invocation to `netplane cni agent`, which the
   netplane-cni DaemonSet runs, over a unix socket, and prints the agent's answer.

   Wire format (cni/client.py has the Python side):
     request: "netplane-cni 2\n" <env length> "\n" <K=V\0K=V...> <stdin bytes>,
              sent with SCM_RIGHTS fds: this process's netns, then CNI_NETNS when it opens
     reply:   <exit code> "\n" <stdout bytes>     or   "declined\n" <reason>

   Without an agent (no socket, refused, declined, or it went away mid-call) it fails at once
   with the spec's code 11 "try again later", so the runtime retries instead of hanging.
   VERSION is answered here: runtimes ask it before every ADD and DEL.
   Kept to plain POSIX calls so a static build stays small. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/netplane/cni.sock"
#define MAGIC "netplane-cni 2\n"
#define LATEST "1.1.0"

extern char **environ;

static const char *const versions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t len) {
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) _exit(2);
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0;
}

static void slurp(int fd, struct buf *b) {
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n > 0) put(b, chunk, (size_t)n);
        else if (n == 0 || errno != EINTR) return;
    }
}

static void write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        data += n;
        len -= (size_t)n;
    }
}

/* The "cniVersion" string of the config, if it is one of ours (a plain scan: no JSON parser). */
static const char *config_version(const char *conf) {
    const char *p = strstr(conf, "\"cniVersion\"");
    if (p) {
        p = strchr(p + 12, ':');
        while (p && *++p && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            ;
        if (p && *p == '"') {
            p++;
            for (size_t i = 0; i < sizeof versions / sizeof *versions; i++) {
                size_t n = strlen(versions[i]);
                if (!strncmp(p, versions[i], n) && p[n] == '"') return versions[i];
            }
        }
    }
    return LATEST;
}

static int version_reply(const char *conf) {
    struct buf out = {0};
    const char *head = "{\"cniVersion\": \"";
    put(&out, head, strlen(head));
    const char *v = config_version(conf);
    put(&out, v, strlen(v));
    put(&out, "\", \"supportedVersions\": [", 25);
    for (size_t i = 0; i < sizeof versions / sizeof *versions; i++) {
        if (i) put(&out, ", ", 2);
        put(&out, "\"", 1);
        put(&out, versions[i], strlen(versions[i]));
        put(&out, "\"", 1);
    }
    put(&out, "]}\n", 3);
    write_all(1, out.data, out.len);
    return 0;
}

static void put_json_string(struct buf *b, const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            put(b, "\\", 1);
            put(b, s, 1);
        } else if (c >= 0x20) {
            put(b, s, 1);
        } else {
            put(b, " ", 1);
        }
    }
}

/* The spec's error JSON for "the agent is not there": code 11, so the runtime retries. */
static int unavailable(const char *conf, const char *path, const char *why) {
    struct buf out = {0};
    const char *v = config_version(conf);
    put(&out, "{\"cniVersion\": \"", 16);
    put(&out, v, strlen(v));
    const char *mid = "\", \"code\": 11, \"msg\": \"netplane CNI agent not available, try again "
                      "later\", \"details\": \"";
    put(&out, mid, strlen(mid));
    put_json_string(&out, path);
    put(&out, ": ", 2);
    put_json_string(&out, why);
    put(&out, "\"}\n", 3);
    write_all(1, out.data, out.len);
    return 1;
}

static int wanted(const char *kv) {
    return !strncmp(kv, "CNI_", 4) || !strncmp(kv, "PATH=", 5);
}

int main(void) {
    struct buf conf = {0};
    slurp(0, &conf);
    if (!conf.data) put(&conf, "", 0);
    const char *command = getenv("CNI_COMMAND");
    if (command && !strcmp(command, "VERSION")) return version_reply(conf.data);

    const char *path = getenv("NETPLANE_CNI_SOCKET");
    if (!path || !*path) path = DEFAULT_SOCKET;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) return unavailable(conf.data, path, "path too long");
    strcpy(addr.sun_path, path);

    /* The frame: magic, env length, env pairs, stdin. */
    struct buf env = {0}, frame = {0};
    for (char **e = environ; *e; e++) {
        if (!wanted(*e)) continue;
        if (env.len) put(&env, "", 1);
        put(&env, *e, strlen(*e));
    }
    char head[64];
    int headlen = snprintf(head, sizeof head, "%s%zu\n", MAGIC, env.len);
    put(&frame, head, (size_t)headlen);
    if (env.len) put(&frame, env.data, env.len);
    put(&frame, conf.data, conf.len);

    int fds[2], nfds = 0;
    fds[nfds++] = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    const char *netns = getenv("CNI_NETNS");
    if (netns && *netns) {
        int fd = open(netns, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) fds[nfds++] = fd; /* a gone netns is the agent's call (DEL allows it) */
    }
    if (fds[0] < 0) return unavailable(conf.data, "/proc/self/ns/net", strerror(errno));

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
        return unavailable(conf.data, path, strerror(errno));

    char control[CMSG_SPACE(sizeof fds)];
    memset(control, 0, sizeof control);
    struct iovec iov = {.iov_base = frame.data, .iov_len = frame.len};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control,
                         .msg_controllen = CMSG_SPACE(nfds * sizeof(int))};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
    ssize_t sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (sent < 0) return unavailable(conf.data, path, strerror(errno));
    if ((size_t)sent < frame.len) write_all(sock, frame.data + sent, frame.len - (size_t)sent);
    shutdown(sock, SHUT_WR);

    struct buf reply = {0};
    slurp(sock, &reply);
    char *nl = reply.data ? memchr(reply.data, '\n', reply.len) : NULL;
    if (!nl) return unavailable(conf.data, path, "the agent closed the connection without a reply");
    *nl = 0;
    if (!strcmp(reply.data, "declined")) return unavailable(conf.data, path, nl + 1);
    char *end;
    long code = strtol(reply.data, &end, 10);
    if (*end || end == reply.data) return unavailable(conf.data, path, "unreadable reply");
    write_all(1, nl + 1, reply.len - (size_t)(nl + 1 - reply.data));
    return (int)code;
}
