/*
 * wsload.c - single-threaded epoll WebSocket load generator for the wsfabric
 * benchmarks (see bench/README.md and /work/shared/design/TARGETS.md).
 *
 * Why C and why like this: the servers under test are Python; a Python client
 * would saturate before them. One thread, level-triggered epoll, and writes
 * coalesced per loop iteration (every frame produced while handling one
 * epoll batch goes out in one send() per socket) keep the client's CPU far
 * below the server's. Client frames are masked with a zero key (legal per
 * RFC 6455, and XOR with zero is a no-op, so payloads are copied verbatim).
 *
 * Every message body is  <prefix> '@' <16 hex digits: CLOCK_MONOTONIC ns>
 * <padding 'x'> <suffix>, and the receiver finds the first '@' followed by
 * 16 hex digits anywhere in what it gets back. That lets a server wrap the
 * payload (a JSON envelope, say) without breaking latency measurement.
 *
 * Modes: echo, latency, broadcast, idle, connrate (see usage()). The result
 * is ONE JSON object on stdout. Progress markers "EVENT <name> <seconds>" go
 * to stderr so a driver can sample the server at the right moments
 * (measure_start, measure_end, all_open, hold_end).
 *
 * Safety: only 127.0.0.1 / localhost / [::1] are accepted as targets; every
 * run has a hard deadline and every loop a count bound.
 *
 * Build: gcc -O2 -Wall -Wextra -o wsload wsload.c   (no external libraries)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- limits */

#define MAX_CONNS 200000          /* count bound on connections/slots */
#define MAX_WINDOW 4096           /* messages in flight per connection */
#define MAX_MSG_SIZE (1 << 20)    /* size of one sent message body */
#define MAX_RECV_FRAME (16 << 20) /* refuse larger frames from the server */
#define BUF_HARD_MAX (48 << 20)   /* per-connection buffer ceiling */
#define WBUF_BACKLOG_MAX (4 << 20) /* open-loop: stop queueing past this */
#define HS_MAX 8192               /* handshake response size bound */
#define RD_SIZE (256 * 1024)      /* shared receive buffer */
#define MAX_EVENTS 1024
#define MAX_HEADERS 16
#define MAX_URLS 16               /* --url may be repeated: conns alternate */
#define MAX_BINDS 64              /* --bind source addresses */
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24 /* linux/in.h; not in older libc headers */
#endif
#define MAX_TICK_SENDS 100000     /* open-loop catch-up per iteration */
#define SCAN_INTERVAL_NS 50000000LL /* timeout scans every 50 ms */
#define MAX_WAIT_NS 50000000LL    /* never sleep longer than 50 ms */

/* The RFC 6455 sample key and its accept value: every connection uses the
 * same key, which saves implementing SHA-1 and is fine for a benchmark. */
static const char WS_KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char WS_ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/* ------------------------------------------------------------- utilities */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t sec_to_ns(double s) { return (int64_t)(s * 1e9); }

static void die(const char *msg)
{
    /* Still emit one JSON object so a driver can parse every outcome. */
    printf("{\"ok\": false, \"error\": \"%s\"}\n", msg);
    fflush(stdout);
    exit(1);
}

static void usage_error(const char *msg)
{
    fprintf(stderr, "wsload: %s (try --help)\n", msg);
    exit(2);
}

static const char HEX[] = "0123456789abcdef";

static void put_hex16(char *p, uint64_t v)
{
    for (int i = 15; i >= 0; i--) {
        p[i] = HEX[v & 15];
        v >>= 4;
    }
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Find the first '@' followed by 16 hex digits; 1 if found. */
static int find_ts(const char *p, size_t len, uint64_t *out)
{
    const char *end = p + len;
    while (p < end && (p = memchr(p, '@', (size_t)(end - p))) != NULL) {
        if (end - p >= 17) {
            uint64_t v = 0;
            int i;
            for (i = 1; i <= 16; i++) {
                int h = hexval((unsigned char)p[i]);
                if (h < 0) break;
                v = (v << 4) | (uint64_t)h;
            }
            if (i == 17) {
                *out = v;
                return 1;
            }
        }
        p++;
    }
    return 0;
}

/* ------------------------------------------------------------ histogram */
/* Log-linear histogram of microseconds: exact below 2048 us, then 1024
 * sub-buckets per power of two (< 0.1 % error), so percentiles are cheap and
 * the memory is fixed (~430 KiB). */

#define H_SUB_BITS 10
#define H_SUB (1 << H_SUB_BITS)
#define H_LINEAR (2 * H_SUB)
#define H_BUCKETS (H_LINEAR + 53 * H_SUB)

typedef struct {
    uint64_t *b;
    uint64_t count;
    uint64_t max;
    double sum;
} hist_t;

static size_t h_index(uint64_t v)
{
    if (v < H_LINEAR) return (size_t)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - H_SUB_BITS;
    return H_LINEAR + (size_t)(msb - H_SUB_BITS - 1) * H_SUB +
           (size_t)((v >> shift) - H_SUB);
}

static uint64_t h_value(size_t idx)
{
    if (idx < H_LINEAR) return idx;
    size_t k = idx - H_LINEAR;
    size_t group = k / H_SUB;
    uint64_t sub = (uint64_t)(k % H_SUB) + H_SUB;
    return sub << (group + 1);
}

static void h_init(hist_t *h)
{
    h->b = calloc(H_BUCKETS, sizeof(uint64_t));
    if (!h->b) die("out of memory");
}

static void h_record(hist_t *h, uint64_t us)
{
    if (us > (1ULL << 40)) us = 1ULL << 40;
    h->b[h_index(us)]++;
    h->count++;
    h->sum += (double)us;
    if (us > h->max) h->max = us;
}

static uint64_t h_quantile(const hist_t *h, double q)
{
    if (h->count == 0) return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = h_value(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

/* --------------------------------------------------------------- buffers */

typedef struct {
    char *p;
    size_t off, len, cap; /* live bytes are p[off .. len) */
} buf_t;

static size_t buf_pending(const buf_t *b) { return b->len - b->off; }

static int buf_reserve(buf_t *b, size_t extra)
{
    if (b->off == b->len) b->off = b->len = 0;
    if (b->len + extra <= b->cap) return 0;
    if (b->off > 0) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra <= b->cap) return 0;
    }
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra) nc *= 2;
    if (nc > BUF_HARD_MAX) return -1;
    char *np = realloc(b->p, nc);
    if (!np) return -1;
    b->p = np;
    b->cap = nc;
    return 0;
}

static int buf_append(buf_t *b, const void *d, size_t n)
{
    if (buf_reserve(b, n)) return -1;
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

static void buf_free(buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* --------------------------------------------------------------- options */

enum mode { M_ECHO, M_LATENCY, M_BROADCAST, M_IDLE, M_CONNRATE };
static const char *MODE_NAMES[] = {"echo", "latency", "broadcast", "idle",
                                   "connrate"};

/* One target server (--url); connection i goes to target i % O.ntargets. */
typedef struct {
    const char *url;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host_hdr[96];
    char path[1024];
    char hs_req[4096]; /* the handshake request for this target */
    size_t hs_len;
} target_t;

static struct {
    enum mode mode;
    target_t targets[MAX_URLS];
    int ntargets;
    int conns, window, size, pub_window, concurrency;
    double warmup, duration, rate, pub_interval_us, hold;
    double connect_timeout, open_timeout, drain_timeout, close_timeout;
    double deadline;
    int wait_first, binary, close_rst, quiet, write_per_msg;
    const char *prefix, *suffix, *hello;
    /* --subprotocol: offered in Sec-WebSocket-Protocol, and the server must
     * select it (a routed-message codec is chosen this way) */
    const char *subprotocol;
    /* --payload-file: the message body, read once (a protobuf envelope, say);
     * its first '@' + 16 hex digits is where each send's stamp goes */
    char *payload;
    size_t payload_len;
    /* --bind: connection i uses source address binds[i % nbinds], so more
     * than one address's worth of ephemeral ports can reach one server */
    struct sockaddr_in binds[MAX_BINDS];
    int nbinds;
    const char *headers[MAX_HEADERS];
    int nheaders;
    long long max_msgs, max_cycles;
    long nofile;
} O;

/* ----------------------------------------------------------- connections */

enum cstate { CS_FREE, CS_CONNECTING, CS_HANDSHAKE, CS_OPEN, CS_CLOSING };

typedef struct {
    int fd;
    uint32_t gen;          /* bumped on every (re)use: stale epoll keys */
    uint8_t state;
    uint8_t ev_out;        /* EPOLLOUT currently registered */
    uint8_t dirty;         /* queued for the end-of-iteration flush */
    uint8_t close_sent, close_rcvd, counted_open;
    uint8_t in_msg, msg_has_ts; /* fragmented message in progress */
    uint64_t msg_ts;
    int64_t t_connect;
    int64_t timeout_at;    /* 0 = none */
    int64_t restart_at;    /* connrate: next cycle start, 0 = none */
    int inflight;          /* echo/latency: sent, not yet answered */
    buf_t rb, wb;
} conn_t;

enum err {
    E_CONNECT, E_HANDSHAKE, E_HS_TIMEOUT, E_PROTOCOL, E_SERVER_CLOSE, E_EOF,
    E_IO, E_BACKLOG, E_CLOSE_TIMEOUT, E_FIRST_MSG_TIMEOUT, E_COUNT
};
static const char *ERR_NAMES[] = {
    "connect", "handshake", "handshake_timeout", "protocol", "server_close",
    "eof", "io", "send_backlog", "close_timeout", "first_msg_timeout"};

enum phase { PH_CONNECT, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_HOLD, PH_CLOSE,
             PH_DONE };

static struct {
    conn_t *conns;
    int nconns;
    int epfd;
    int *dirty;
    int ndirty;
    char *rdbuf;
    int use_pwait2;

    enum phase phase;
    int64_t t_start, t_load, t_m0, t_m1, t_all_open, t_close_deadline;
    int64_t hard_deadline, last_scan;
    struct rusage ru_m0, ru_m1;

    int next_open, pending_hs, n_open, n_live, n_open_at_m0;
    uint64_t err[E_COUNT];
    uint64_t err_before_hold, err_after_hold;

    hist_t lat;   /* message latency, or connrate cycle time */
    hist_t hs;    /* handshake time (connect() -> 101) */

    uint64_t sent_total, recv_total, sent_win, recv_win, other_msgs;
    int64_t total_inflight;
    /* broadcast */
    int pub_idx, pub_outstanding;
    uint64_t pubs_total, pubs_win, deliv_total, deliv_win, deliv_of_win_pubs;
    /* open-loop schedule (latency, broadcast --pub-interval-us) */
    int64_t sched_t0;
    uint64_t sched_k;
    double sched_interval_ns;
    int rr_next;
    /* connrate */
    uint64_t cycles_total, cycles_win, fails_win, cycles_started;

    /* prebuilt frames */
    char *frame_tpl;
    size_t frame_len, ts_off;
    int deadline_hit;
    const char *fatal;
} G;

/* Connections alternate between the targets: conn i -> target i % n. */
static const target_t *conn_target(const conn_t *c)
{
    return &O.targets[(c - G.conns) % O.ntargets];
}

static uint64_t conn_key(const conn_t *c)
{
    return ((uint64_t)c->gen << 32) | (uint64_t)(c - G.conns);
}

static int sending_phase(void)
{
    return G.phase == PH_WARMUP || G.phase == PH_MEASURE;
}

static void event_line(const char *name, int64_t now)
{
    if (!O.quiet)
        fprintf(stderr, "EVENT %s %.6f\n", name, (double)(now - G.t_start) / 1e9);
}

static void set_out(conn_t *c, int on)
{
    if (c->ev_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0),
                             .data.u64 = conn_key(c)};
    if (epoll_ctl(G.epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->ev_out = (uint8_t)on;
}

static void mark_dirty(conn_t *c)
{
    if (c->dirty) return;
    c->dirty = 1;
    G.dirty[G.ndirty++] = (int)(c - G.conns);
}

static void conn_release(conn_t *c);
static void conn_fail(conn_t *c, enum err e, int64_t now);

/* Close the socket and forget the connection (the slot stays reusable). */
static void conn_release(conn_t *c)
{
    if (c->fd < 0) return;
    if (O.close_rst) {
        /* connrate --close rst: abortive close, no TIME_WAIT on either side */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE) G.pending_hs--;
    if (c->counted_open) G.n_open--;
    G.total_inflight -= c->inflight;
    c->inflight = 0;
    c->counted_open = 0;
    c->state = CS_FREE;
    c->gen++;
    c->timeout_at = 0;
    buf_free(&c->rb);
    buf_free(&c->wb);
    G.n_live--;
}

/* connrate: a slot whose cycle ended starts again (later after failures,
 * so a refusing server is not hammered in a tight loop). */
static void schedule_restart(conn_t *c, int64_t now, int failed)
{
    if (O.mode != M_CONNRATE) return;
    c->restart_at = now + (failed ? 10000000LL : 1);
}

static void conn_fail(conn_t *c, enum err e, int64_t now)
{
    G.err[e]++;
    if (O.mode == M_CONNRATE && G.phase == PH_MEASURE) G.fails_win++;
    if (O.mode == M_BROADCAST && (int)(c - G.conns) == G.pub_idx &&
        G.phase < PH_DRAIN && G.phase != PH_CONNECT)
        G.fatal = "publisher connection lost";
    conn_release(c);
    schedule_restart(c, now, 1);
}

/* --------------------------------------------------------------- framing */

static int queue_frame(conn_t *c, int opcode, const void *payload, size_t n)
{
    uint8_t hdr[14];
    size_t h = 0;
    hdr[h++] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        hdr[h++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (uint8_t)(n >> 8);
        hdr[h++] = (uint8_t)n;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) hdr[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    memset(hdr + h, 0, 4); /* zero mask key: payload goes out unchanged */
    h += 4;
    if (buf_append(&c->wb, hdr, h) || buf_append(&c->wb, payload, n)) return -1;
    mark_dirty(c);
    return 0;
}

/* Build the data frame once; each send copies it and patches the stamp. */
static void build_frame_template(void)
{
    size_t pre = O.prefix ? strlen(O.prefix) : 0;
    size_t suf = O.suffix ? strlen(O.suffix) : 0;
    size_t body = O.payload ? O.payload_len : (size_t)O.size;
    size_t n = pre + body + suf;
    size_t h = n < 126 ? 6 : (n < 65536 ? 8 : 14);
    G.frame_tpl = malloc(h + n);
    if (!G.frame_tpl) die("out of memory");
    uint8_t *f = (uint8_t *)G.frame_tpl;
    size_t i = 0;
    f[i++] = (uint8_t)(0x80 | (O.binary ? 2 : 1));
    if (n < 126) {
        f[i++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        f[i++] = 0x80 | 126;
        f[i++] = (uint8_t)(n >> 8);
        f[i++] = (uint8_t)n;
    } else {
        f[i++] = 0x80 | 127;
        for (int k = 7; k >= 0; k--) f[i++] = (uint8_t)((uint64_t)n >> (8 * k));
    }
    memset(f + i, 0, 4);
    i += 4;
    memcpy(f + i, O.prefix ? O.prefix : "", pre);
    i += pre;
    if (O.payload) {
        /* verbatim; the stamp goes where the file has its '@' + 16 hex */
        memcpy(f + i, O.payload, body);
        const char *at = NULL;
        uint64_t ignored;
        for (const char *q = O.payload; q < O.payload + body; q++)
            if (*q == '@' && find_ts(q, body - (size_t)(q - O.payload), &ignored) &&
                (size_t)(q - O.payload) + 17 <= body) {
                at = q;
                break;
            }
        if (!at) usage_error("--payload-file must hold '@' followed by 16 hex digits");
        G.ts_off = i + (size_t)(at - O.payload) + 1;
        i += body;
        memcpy(f + i, O.suffix ? O.suffix : "", suf);
        G.frame_len = i + suf;
        return;
    }
    f[i] = '@';
    G.ts_off = i + 1;
    memset(f + i + 1, '0', 16);
    memset(f + i + 17, 'x', body - 17);
    i += body;
    memcpy(f + i, O.suffix ? O.suffix : "", suf);
    G.frame_len = i + suf;
}

static void flush_conn(conn_t *c, int64_t now);

static int send_msg(conn_t *c, uint64_t ts)
{
    if ((uint64_t)G.sent_total >= (uint64_t)O.max_msgs) return 0;
    if (buf_pending(&c->wb) > WBUF_BACKLOG_MAX) {
        /* open loop against a server that stopped reading: count, skip */
        G.err[E_BACKLOG]++;
        return 0;
    }
    if (buf_reserve(&c->wb, G.frame_len)) {
        G.err[E_BACKLOG]++;
        return 0;
    }
    char *p = c->wb.p + c->wb.len;
    memcpy(p, G.frame_tpl, G.frame_len);
    put_hex16(p + G.ts_off, ts);
    c->wb.len += G.frame_len;
    G.sent_total++;
    /* by stamp, as replies are: an open-loop send scheduled before the
     * window but sent inside it belongs to neither count */
    if (G.phase == PH_MEASURE && (int64_t)ts >= G.t_m0) G.sent_win++;
    if (O.write_per_msg && !c->ev_out) {
        /* --write-per-msg: one send() per message, as a client that does
         * not coalesce (a browser tab, most client libraries) would */
        uint32_t gen = c->gen;
        flush_conn(c, now_ns());
        return c->fd >= 0 && c->gen == gen;
    }
    mark_dirty(c);
    return 1;
}

static void start_close(conn_t *c, int64_t now, int code)
{
    if (c->state != CS_OPEN) return;
    uint8_t pl[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    queue_frame(c, 8, pl, 2);
    c->close_sent = 1;
    c->state = CS_CLOSING;
    c->timeout_at = now + sec_to_ns(O.close_timeout);
}

/* ------------------------------------------------------ mode behaviour */

static void publish(int64_t now, uint64_t ts)
{
    conn_t *p = &G.conns[G.pub_idx];
    if (p->state != CS_OPEN) return;
    if (send_msg(p, ts)) {
        G.pub_outstanding++;
        G.pubs_total++;
        if (G.phase == PH_MEASURE && (int64_t)ts >= G.t_m0) G.pubs_win++;
    }
    (void)now;
}

static void on_open(conn_t *c, int64_t now)
{
    /* --hello: a protocol's own "join" message (Socket.IO's "40") */
    if (O.hello && O.mode != M_CONNRATE) queue_frame(c, 1, O.hello, strlen(O.hello));
    if (O.mode == M_CONNRATE) {
        G.cycles_started++;
        if (O.wait_first)
            c->timeout_at = now + sec_to_ns(O.connect_timeout);
        else
            start_close(c, now, 1000);
    }
}

/* A complete data message arrived (after reassembly of fragments). */
static void on_message(conn_t *c, int has_ts, uint64_t ts, int64_t now)
{
    G.recv_total++;
    uint64_t lat_us = has_ts && (int64_t)ts <= now ? (uint64_t)(now - (int64_t)ts) / 1000 : 0;
    switch (O.mode) {
    case M_ECHO:
        if (!has_ts || c->inflight <= 0) {
            G.other_msgs++;
            break;
        }
        c->inflight--;
        G.total_inflight--;
        if (G.phase == PH_MEASURE) {
            G.recv_win++;
            h_record(&G.lat, lat_us);
        }
        if (sending_phase() && send_msg(c, (uint64_t)now)) {
            c->inflight++;
            G.total_inflight++;
        }
        break;
    case M_LATENCY:
        if (!has_ts || c->inflight <= 0) {
            G.other_msgs++;
            break;
        }
        c->inflight--;
        G.total_inflight--;
        /* attributed by scheduled send time, so the window is exact */
        if (G.t_m0 && (int64_t)ts >= G.t_m0 && (!G.t_m1 || (int64_t)ts < G.t_m1)) {
            G.recv_win++;
            h_record(&G.lat, lat_us);
        }
        break;
    case M_BROADCAST:
        if (!has_ts) {
            G.other_msgs++;
            break;
        }
        G.deliv_total++;
        if (G.phase == PH_MEASURE) {
            G.deliv_win++;
            h_record(&G.lat, lat_us);
        }
        if (G.t_m0 && (int64_t)ts >= G.t_m0 && (!G.t_m1 || (int64_t)ts < G.t_m1))
            G.deliv_of_win_pubs++;
        if ((int)(c - G.conns) == G.pub_idx) {
            if (G.pub_outstanding > 0) G.pub_outstanding--;
            if (O.pub_interval_us <= 0 && sending_phase())
                while (G.pub_outstanding < O.pub_window &&
                       G.sent_total < (uint64_t)O.max_msgs)
                    publish(now, (uint64_t)now);
        }
        break;
    case M_CONNRATE:
        if (O.wait_first && c->state == CS_OPEN) start_close(c, now, 1000);
        break;
    case M_IDLE:
        G.other_msgs++;
        break;
    }
}

/* The TCP connection closed after a close handshake (ours or the server's). */
static void on_clean_close(conn_t *c, int64_t now)
{
    if (O.mode == M_CONNRATE) {
        G.cycles_total++;
        if (G.phase == PH_MEASURE) {
            G.cycles_win++;
            h_record(&G.lat, (uint64_t)(now - c->t_connect) / 1000);
        }
        conn_release(c);
        if (sending_phase()) schedule_restart(c, now, 0);
        return;
    }
    conn_release(c);
}

/* ------------------------------------------------------- input handling */

/* Returns bytes consumed (0: incomplete), or -1 if the connection failed. */
static long parse_handshake(conn_t *c, const char *p, size_t len, int64_t now)
{
    const char *end = memmem(p, len, "\r\n\r\n", 4);
    if (!end) {
        if (len > HS_MAX) {
            conn_fail(c, E_HANDSHAKE, now);
            return -1;
        }
        return 0;
    }
    size_t hlen = (size_t)(end - p) + 4;
    if (hlen > HS_MAX || len < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0) {
        conn_fail(c, E_HANDSHAKE, now);
        return -1;
    }
    /* Case-insensitive header lookup on a lower-cased copy. */
    char low[HS_MAX + 1];
    for (size_t i = 0; i < hlen; i++) low[i] = (char)tolower((unsigned char)p[i]);
    low[hlen] = 0;
    const char *acc = strstr(low, "\r\nsec-websocket-accept:");
    if (!acc) {
        conn_fail(c, E_HANDSHAKE, now);
        return -1;
    }
    const char *v = p + (acc - low) + strlen("\r\nsec-websocket-accept:");
    while (*v == ' ' || *v == '\t') v++;
    if (strncmp(v, WS_ACCEPT, strlen(WS_ACCEPT)) != 0 ||
        strstr(low, "\r\nsec-websocket-extensions:")) {
        /* wrong accept, or an extension we never offered */
        conn_fail(c, E_HANDSHAKE, now);
        return -1;
    }
    if (O.subprotocol) {
        /* the server must select what we offered, or the codec differs */
        const char *sp = strstr(low, "\r\nsec-websocket-protocol:");
        if (!sp) {
            conn_fail(c, E_HANDSHAKE, now);
            return -1;
        }
        const char *sv = p + (sp - low) + strlen("\r\nsec-websocket-protocol:");
        while (*sv == ' ' || *sv == '\t') sv++;
        size_t sl = strlen(O.subprotocol);
        if (strncmp(sv, O.subprotocol, sl) != 0 ||
            (sv[sl] != '\r' && sv[sl] != ' ' && sv[sl] != '\t')) {
            conn_fail(c, E_HANDSHAKE, now);
            return -1;
        }
    }
    c->state = CS_OPEN;
    c->timeout_at = 0;
    c->counted_open = 1;
    G.pending_hs--;
    G.n_open++;
    h_record(&G.hs, (uint64_t)(now - c->t_connect) / 1000);
    on_open(c, now);
    return (long)hlen;
}

/* Parse complete server frames; returns bytes consumed or -1 if released. */
static long parse_frames(conn_t *c, const char *p, size_t len, int64_t now)
{
    size_t pos = 0;
    uint32_t gen = c->gen;
    while (len - pos >= 2) {
        const uint8_t *f = (const uint8_t *)p + pos;
        uint8_t b0 = f[0], b1 = f[1];
        size_t hdr = 2;
        uint64_t plen = b1 & 0x7f;
        if (plen == 126) {
            if (len - pos < 4) break;
            plen = ((uint64_t)f[2] << 8) | f[3];
            hdr = 4;
        } else if (plen == 127) {
            if (len - pos < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | f[2 + i];
            hdr = 10;
        }
        /* servers never mask; no extension was negotiated, so no RSV bits */
        if ((b1 & 0x80) || (b0 & 0x70) || plen > MAX_RECV_FRAME) {
            conn_fail(c, E_PROTOCOL, now);
            return -1;
        }
        if (len - pos - hdr < plen) break;
        const char *pl = p + pos + hdr;
        pos += hdr + (size_t)plen;
        int opcode = b0 & 0x0f, fin = (b0 & 0x80) != 0;
        if (opcode >= 8 && (!fin || plen > 125)) {
            conn_fail(c, E_PROTOCOL, now);
            return -1;
        }
        switch (opcode) {
        case 1:
        case 2:
        case 0: {
            if ((opcode == 0) != (c->in_msg != 0)) {
                conn_fail(c, E_PROTOCOL, now); /* bad fragmentation */
                return -1;
            }
            if (opcode != 0) c->msg_has_ts = 0;
            if (!c->msg_has_ts) {
                uint64_t ts;
                if (find_ts(pl, (size_t)plen, &ts)) {
                    c->msg_has_ts = 1;
                    c->msg_ts = ts;
                }
            }
            c->in_msg = !fin;
            if (fin) on_message(c, c->msg_has_ts, c->msg_ts, now);
            break;
        }
        case 8: /* close: answer once, then wait for the server's FIN */
            c->close_rcvd = 1;
            if (c->state == CS_OPEN) {
                if (O.mode != M_CONNRATE && G.phase < PH_CLOSE) G.err[E_SERVER_CLOSE]++;
                queue_frame(c, 8, pl, plen >= 2 ? 2 : 0);
                c->close_sent = 1;
                c->state = CS_CLOSING;
                c->timeout_at = now + sec_to_ns(O.close_timeout);
            }
            break;
        case 9: /* ping -> pong with the same payload */
            if (c->state == CS_OPEN) queue_frame(c, 10, pl, (size_t)plen);
            break;
        case 10: /* pong */
            break;
        default:
            conn_fail(c, E_PROTOCOL, now);
            return -1;
        }
        if (c->fd < 0 || c->gen != gen) return -1;
    }
    return (long)pos;
}

/* Parse what was read; leftovers stay in the connection's read buffer. */
static int process_input(conn_t *c, const char *data, size_t n, int64_t now)
{
    const char *p = data;
    size_t len = n;
    int use_rb = buf_pending(&c->rb) > 0;
    if (use_rb) {
        if (buf_append(&c->rb, data, n)) {
            conn_fail(c, E_PROTOCOL, now);
            return -1;
        }
        p = c->rb.p + c->rb.off;
        len = buf_pending(&c->rb);
    }
    size_t used = 0;
    if (c->state == CS_HANDSHAKE) {
        long r = parse_handshake(c, p, len, now);
        if (r < 0) return -1;
        used = (size_t)r;
    }
    if (c->state == CS_OPEN || c->state == CS_CLOSING) {
        long r = parse_frames(c, p + used, len - used, now);
        if (r < 0) return -1;
        used += (size_t)r;
    }
    if (use_rb) {
        c->rb.off += used;
        if (c->rb.off == c->rb.len) c->rb.off = c->rb.len = 0;
    } else if (used < len) {
        if (buf_append(&c->rb, p + used, len - used)) {
            conn_fail(c, E_PROTOCOL, now);
            return -1;
        }
    }
    return 0;
}

static void on_eof(conn_t *c, int64_t now)
{
    if (c->state == CS_CLOSING) {
        on_clean_close(c, now);
        return;
    }
    conn_fail(c, c->state == CS_HANDSHAKE ? E_HANDSHAKE : E_EOF, now);
}

static void on_readable(conn_t *c, int64_t now)
{
    /* a few reads per event, then let other sockets have a turn */
    for (int round = 0; round < 8; round++) {
        ssize_t n = recv(c->fd, G.rdbuf, RD_SIZE, 0);
        if (n > 0) {
            if (process_input(c, G.rdbuf, (size_t)n, now) < 0 || c->fd < 0) return;
            if (n < RD_SIZE) return;
            continue;
        }
        if (n == 0) {
            on_eof(c, now);
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        conn_fail(c, E_IO, now);
        return;
    }
}

static void flush_conn(conn_t *c, int64_t now)
{
    for (int round = 0; round < 64 && buf_pending(&c->wb) > 0; round++) {
        ssize_t n = send(c->fd, c->wb.p + c->wb.off, buf_pending(&c->wb),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->wb.off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        conn_fail(c, E_IO, now);
        return;
    }
    if (buf_pending(&c->wb) == 0) {
        c->wb.off = c->wb.len = 0;
        set_out(c, 0);
    } else {
        set_out(c, 1); /* kernel buffer full: wait for EPOLLOUT */
    }
}

static void flush_dirty(int64_t now)
{
    for (int i = 0; i < G.ndirty; i++) {
        conn_t *c = &G.conns[G.dirty[i]];
        c->dirty = 0;
        if (c->fd >= 0 && c->state >= CS_HANDSHAKE) flush_conn(c, now);
    }
    G.ndirty = 0;
}

static void on_connected(conn_t *c, int64_t now)
{
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0) {
        conn_fail(c, E_CONNECT, now);
        return;
    }
    c->state = CS_HANDSHAKE;
    const target_t *t = conn_target(c);
    if (buf_append(&c->wb, t->hs_req, t->hs_len)) {
        conn_fail(c, E_IO, now);
        return;
    }
    mark_dirty(c);
}

static void on_event(uint64_t key, uint32_t ev, int64_t now)
{
    conn_t *c = &G.conns[key & 0xffffffffu];
    if (c->fd < 0 || c->gen != (uint32_t)(key >> 32)) return; /* stale */
    if (c->state == CS_CONNECTING) {
        on_connected(c, now);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        on_readable(c, now);
        if (c->fd < 0 || c->gen != (uint32_t)(key >> 32)) return;
    }
    if ((ev & EPOLLOUT) && c->state >= CS_HANDSHAKE) flush_conn(c, now);
}

static void conn_start(conn_t *c, int64_t now)
{
    c->restart_at = 0;
    const target_t *t = conn_target(c);
    int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        G.err[E_CONNECT]++;
        if (O.mode == M_CONNRATE && G.phase == PH_MEASURE) G.fails_win++;
        schedule_restart(c, now, 1);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (O.nbinds > 0 && t->addr.ss_family == AF_INET) {
        /* the port is chosen at connect(), per 4-tuple, not per address */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        const struct sockaddr_in *src = &O.binds[(c - G.conns) % O.nbinds];
        if (bind(fd, (const struct sockaddr *)src, sizeof *src) < 0) {
            close(fd);
            G.err[E_CONNECT]++;
            if (O.mode == M_CONNRATE && G.phase == PH_MEASURE) G.fails_win++;
            schedule_restart(c, now, 1);
            return;
        }
    }
    c->fd = fd;
    c->gen++;
    c->state = CS_CONNECTING;
    c->ev_out = 1;
    c->close_sent = c->close_rcvd = c->counted_open = 0;
    c->in_msg = c->msg_has_ts = 0;
    c->inflight = 0;
    c->t_connect = now;
    c->timeout_at = now + sec_to_ns(O.connect_timeout);
    G.pending_hs++;
    G.n_live++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = conn_key(c)};
    if (epoll_ctl(G.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        conn_fail(c, E_CONNECT, now);
        return;
    }
    /* completion (or refusal) is reported by EPOLLOUT/EPOLLERR */
    if (connect(fd, (const struct sockaddr *)&t->addr, t->addrlen) < 0 && errno != EINPROGRESS)
        conn_fail(c, E_CONNECT, now);
}

/* --------------------------------------------------------- phase control */

static void begin_measure(int64_t now)
{
    G.phase = PH_MEASURE;
    G.t_m0 = now;
    G.n_open_at_m0 = G.n_open;
    getrusage(RUSAGE_SELF, &G.ru_m0);
    event_line("measure_start", now);
}

static void start_load(int64_t now)
{
    G.t_load = now;
    G.phase = PH_WARMUP;
    G.sched_t0 = now;
    G.sched_k = 0;
    if (O.mode == M_ECHO) {
        for (int i = 0; i < G.nconns; i++) {
            conn_t *c = &G.conns[i];
            for (int k = 0; k < O.window && c->state == CS_OPEN; k++)
                if (send_msg(c, (uint64_t)now)) {
                    c->inflight++;
                    G.total_inflight++;
                }
        }
    } else if (O.mode == M_BROADCAST) {
        /* the first open connection publishes (normally connection 0) */
        G.pub_idx = -1;
        for (int i = 0; i < G.nconns && G.pub_idx < 0; i++)
            if (G.conns[i].state == CS_OPEN) G.pub_idx = i;
        if (G.pub_idx < 0) {
            G.fatal = "no open connection";
            return;
        }
        if (O.pub_interval_us <= 0)
            for (int k = 0; k < O.pub_window; k++) publish(now, (uint64_t)now);
    } else if (O.mode == M_CONNRATE) {
        for (int i = 0; i < G.nconns; i++) G.conns[i].restart_at = now;
    }
    if (O.warmup <= 0) begin_measure(now);
}

static void begin_close(int64_t now)
{
    G.phase = PH_CLOSE;
    G.t_close_deadline = now + sec_to_ns(O.close_timeout) + 500000000LL;
    for (int i = 0; i < G.nconns; i++) {
        conn_t *c = &G.conns[i];
        c->restart_at = 0;
        if (c->fd < 0) continue;
        if (c->state == CS_OPEN)
            start_close(c, now, 1000);
        else if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE)
            conn_release(c);
    }
}

static int drained(void)
{
    if (O.mode == M_ECHO || O.mode == M_LATENCY) return G.total_inflight <= 0;
    if (O.mode == M_BROADCAST)
        return G.pub_outstanding == 0 &&
               G.deliv_total >= G.pubs_total * (uint64_t)G.n_open;
    return 1;
}

static conn_t *next_open_conn(void)
{
    for (int tries = 0; tries < G.nconns; tries++) {
        conn_t *c = &G.conns[G.rr_next];
        G.rr_next = (G.rr_next + 1) % G.nconns;
        if (c->state == CS_OPEN) return c;
    }
    return NULL;
}

/* Open-loop sends whose scheduled time has come; latency is measured from
 * the scheduled time, so a stalled server or client cannot hide its delay. */
static void open_loop_sends(int64_t now)
{
    for (int n = 0; n < MAX_TICK_SENDS; n++) {
        int64_t due = G.sched_t0 + (int64_t)((double)G.sched_k * G.sched_interval_ns);
        if (due > now || G.sent_total >= (uint64_t)O.max_msgs) return;
        G.sched_k++;
        if (O.mode == M_LATENCY) {
            conn_t *c = next_open_conn();
            if (!c) return;
            if (send_msg(c, (uint64_t)due)) {
                c->inflight++;
                G.total_inflight++;
            }
        } else {
            publish(now, (uint64_t)due);
        }
    }
}

static void scan_timeouts(int64_t now)
{
    for (int i = 0; i < G.nconns; i++) {
        conn_t *c = &G.conns[i];
        if (c->fd < 0 || !c->timeout_at || now < c->timeout_at) continue;
        if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE)
            conn_fail(c, E_HS_TIMEOUT, now);
        else if (c->state == CS_CLOSING)
            conn_fail(c, E_CLOSE_TIMEOUT, now);
        else if (c->state == CS_OPEN)
            conn_fail(c, E_FIRST_MSG_TIMEOUT, now);
    }
}

static void tick(int64_t now)
{
    if (now - G.last_scan >= SCAN_INTERVAL_NS) {
        G.last_scan = now;
        scan_timeouts(now);
    }
    if (G.fatal && G.phase < PH_CLOSE) {
        begin_close(now);
        return;
    }
    switch (G.phase) {
    case PH_CONNECT:
        while (G.pending_hs < O.concurrency && G.next_open < G.nconns)
            conn_start(&G.conns[G.next_open++], now);
        if ((G.next_open >= G.nconns && G.pending_hs == 0) ||
            now - G.t_start > sec_to_ns(O.open_timeout)) {
            for (int i = 0; i < G.nconns; i++) /* stragglers past open_timeout */
                if (G.conns[i].state == CS_CONNECTING || G.conns[i].state == CS_HANDSHAKE)
                    conn_fail(&G.conns[i], E_HS_TIMEOUT, now);
            G.t_all_open = now;
            if (G.n_open == 0) {
                G.fatal = "no connection could be opened";
                G.phase = PH_DONE;
            } else if (O.mode == M_IDLE) {
                G.phase = PH_HOLD;
                G.err_before_hold = 0;
                for (int e = 0; e < E_COUNT; e++) G.err_before_hold += G.err[e];
                event_line("all_open", now);
            } else {
                start_load(now);
            }
        }
        break;
    case PH_WARMUP:
        if (now >= G.t_load + sec_to_ns(O.warmup)) begin_measure(now);
        break;
    case PH_MEASURE:
        if (now >= G.t_m0 + sec_to_ns(O.duration)) {
            G.phase = PH_DRAIN;
            G.t_m1 = now;
            getrusage(RUSAGE_SELF, &G.ru_m1);
            event_line("measure_end", now);
        }
        break;
    case PH_DRAIN:
        if (drained() || now >= G.t_m1 + sec_to_ns(O.drain_timeout)) begin_close(now);
        break;
    case PH_HOLD:
        if (now >= G.t_all_open + sec_to_ns(O.hold)) {
            G.err_after_hold = 0;
            for (int e = 0; e < E_COUNT; e++) G.err_after_hold += G.err[e];
            event_line("hold_end", now);
            begin_close(now);
        }
        break;
    case PH_CLOSE:
        if (G.n_live == 0 || now >= G.t_close_deadline) G.phase = PH_DONE;
        break;
    case PH_DONE:
        break;
    }
    if (!sending_phase()) return;
    if ((O.mode == M_LATENCY) || (O.mode == M_BROADCAST && O.pub_interval_us > 0))
        open_loop_sends(now);
    if (O.mode == M_CONNRATE) {
        for (int i = 0; i < G.nconns; i++) {
            conn_t *c = &G.conns[i];
            if (c->fd < 0 && c->restart_at && now >= c->restart_at &&
                G.cycles_started + (uint64_t)G.pending_hs < (uint64_t)O.max_cycles)
                conn_start(c, now);
        }
    }
}

/* How long epoll may sleep: until the next phase boundary, scheduled send,
 * connrate restart or timeout scan, and never more than MAX_WAIT_NS. */
static int64_t wait_budget(int64_t now)
{
    int64_t next = now + MAX_WAIT_NS;
#define UPTO(t) do { if ((t) < next) next = (t); } while (0)
    UPTO(G.last_scan + SCAN_INTERVAL_NS);
    UPTO(G.hard_deadline);
    switch (G.phase) {
    case PH_WARMUP: UPTO(G.t_load + sec_to_ns(O.warmup)); break;
    case PH_MEASURE: UPTO(G.t_m0 + sec_to_ns(O.duration)); break;
    case PH_DRAIN: UPTO(G.t_m1 + sec_to_ns(O.drain_timeout)); break;
    case PH_HOLD: UPTO(G.t_all_open + sec_to_ns(O.hold)); break;
    case PH_CLOSE: UPTO(G.t_close_deadline); break;
    default: break;
    }
    if (sending_phase() && (O.mode == M_LATENCY ||
                            (O.mode == M_BROADCAST && O.pub_interval_us > 0)))
        UPTO(G.sched_t0 + (int64_t)((double)G.sched_k * G.sched_interval_ns));
    if (O.mode == M_CONNRATE && sending_phase())
        for (int i = 0; i < G.nconns; i++)
            if (G.conns[i].fd < 0 && G.conns[i].restart_at) UPTO(G.conns[i].restart_at);
    if (G.phase == PH_CONNECT && G.pending_hs < O.concurrency && G.next_open < G.nconns)
        next = now;
#undef UPTO
    return next > now ? next - now : 0;
}

static int wait_events(struct epoll_event *evs, int64_t budget_ns)
{
    if (G.use_pwait2) {
        struct timespec ts = {.tv_sec = budget_ns / 1000000000LL,
                              .tv_nsec = budget_ns % 1000000000LL};
        int n = (int)syscall(SYS_epoll_pwait2, G.epfd, evs, MAX_EVENTS, &ts, NULL, 0);
        if (n >= 0 || errno != ENOSYS) return n;
        G.use_pwait2 = 0; /* old kernel: millisecond timeouts */
    }
    return epoll_wait(G.epfd, evs, MAX_EVENTS, (int)((budget_ns + 999999) / 1000000));
}

/* ---------------------------------------------------------------- output */

static int json_first;

static void jkey(const char *k)
{
    printf("%s\"%s\": ", json_first ? "" : ", ", k);
    json_first = 0;
}
static void jint(const char *k, long long v) { jkey(k); printf("%lld", v); }
static void jnum(const char *k, double v) { jkey(k); printf(isfinite(v) ? "%.3f" : "null", v); }
static void jstr(const char *k, const char *v)
{
    jkey(k);
    putchar('"');
    for (; *v; v++) {
        if (*v == '"' || *v == '\\') putchar('\\');
        if ((unsigned char)*v >= 0x20) putchar(*v);
    }
    putchar('"');
}
static void jbool(const char *k, int v) { jkey(k); printf(v ? "true" : "false"); }

static void jhist(const char *k, const hist_t *h)
{
    jkey(k);
    printf("{\"count\": %" PRIu64 ", \"mean\": %.1f, \"p50\": %" PRIu64
           ", \"p90\": %" PRIu64 ", \"p99\": %" PRIu64 ", \"p999\": %" PRIu64
           ", \"max\": %" PRIu64 "}",
           h->count, h->count ? h->sum / (double)h->count : 0.0,
           h_quantile(h, 0.50), h_quantile(h, 0.90), h_quantile(h, 0.99),
           h_quantile(h, 0.999), h->max);
}

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

static void print_result(int64_t t_end)
{
    double win = G.t_m1 > G.t_m0 ? (double)(G.t_m1 - G.t_m0) / 1e9 : 0.0;
    uint64_t errors = 0;
    for (int e = 0; e < E_COUNT; e++) errors += G.err[e];

    /* A run that measured nothing must not look like a result of zero. */
    uint64_t measured = O.mode == M_ECHO || O.mode == M_LATENCY ? G.recv_win
                        : O.mode == M_BROADCAST                 ? G.deliv_win
                        : O.mode == M_CONNRATE                  ? G.cycles_win
                                                                : (uint64_t)G.hs.count;
    if (!G.fatal && G.deadline_hit) G.fatal = "hard deadline reached";
    if (!G.fatal && measured == 0) G.fatal = "nothing was measured";

    json_first = 1;
    printf("{");
    jbool("ok", G.fatal == NULL);
    if (G.fatal) jstr("error", G.fatal);
    jstr("mode", MODE_NAMES[O.mode]);
    jstr("url", O.targets[0].url);
    if (O.ntargets > 1) {
        jkey("urls");
        printf("[");
        for (int i = 0; i < O.ntargets; i++) {
            /* URLs were checked to be plain ws://host:port/path: no escaping */
            printf("%s\"%s\"", i ? ", " : "", O.targets[i].url);
        }
        printf("]");
    }
    jint("conns", O.conns);
    jint("conns_opened", (long long)G.hs.count);
    jint("size", O.payload ? (long long)O.payload_len : O.size);
    if (O.subprotocol) jstr("subprotocol", O.subprotocol);
    jnum("warmup_s", O.warmup);
    jnum("duration_s", win);
    jnum("wall_s", (double)(t_end - G.t_start) / 1e9);
    jnum("connect_phase_s", G.t_all_open ? (double)(G.t_all_open - G.t_start) / 1e9 : 0.0);
    jbool("deadline_hit", G.deadline_hit);

    switch (O.mode) {
    case M_ECHO:
        jint("window", O.window);
        jint("msgs_sent", (long long)G.sent_win);
        jint("msgs_recv", (long long)G.recv_win);
        jnum("msgs_per_s", win > 0 ? (double)G.recv_win / win : 0.0);
        jint("msgs_unanswered", (long long)G.total_inflight);
        jhist("latency_us", &G.lat);
        break;
    case M_LATENCY:
        jnum("rate_target", O.rate);
        jint("msgs_sent", (long long)G.sent_win);
        jint("msgs_recv", (long long)G.recv_win);
        jnum("rate_achieved", win > 0 ? (double)G.sent_win / win : 0.0);
        jint("msgs_lost", (long long)G.sent_win - (long long)G.recv_win);
        jhist("latency_us", &G.lat);
        break;
    case M_BROADCAST: {
        jint("publisher", G.pub_idx);
        if (O.pub_interval_us > 0)
            jnum("pub_interval_us", O.pub_interval_us);
        else
            jint("pub_window", O.pub_window);
        jint("receivers", G.n_open_at_m0);
        jint("publishes", (long long)G.pubs_win);
        jint("deliveries", (long long)G.deliv_win);
        jnum("deliveries_per_s", win > 0 ? (double)G.deliv_win / win : 0.0);
        jnum("publishes_per_s", win > 0 ? (double)G.pubs_win / win : 0.0);
        double expect = (double)G.pubs_win * (double)G.n_open_at_m0;
        jnum("delivery_ratio", expect > 0 ? (double)G.deliv_of_win_pubs / expect : 0.0);
        jhist("latency_us", &G.lat);
        break;
    }
    case M_IDLE:
        jnum("hold_s", O.hold);
        jnum("handshake_total_s", G.t_all_open ? (double)(G.t_all_open - G.t_start) / 1e9 : 0.0);
        jint("errors_during_hold", (long long)(G.err_after_hold - G.err_before_hold));
        break;
    case M_CONNRATE:
        jint("concurrency", O.conns);
        jbool("wait_first", O.wait_first);
        jint("cycles", (long long)G.cycles_win);
        jnum("cycles_per_s", win > 0 ? (double)G.cycles_win / win : 0.0);
        jint("failures", (long long)G.fails_win);
        jint("cycles_total", (long long)G.cycles_total);
        jhist("cycle_us", &G.lat);
        break;
    }
    jhist("handshake_us", &G.hs);
    jint("other_msgs", (long long)G.other_msgs);
    jint("errors", (long long)errors);
    jkey("error_detail");
    printf("{");
    for (int e = 0, first = 1; e < E_COUNT; e++) {
        if (!G.err[e]) continue;
        printf("%s\"%s\": %" PRIu64, first ? "" : ", ", ERR_NAMES[e], G.err[e]);
        first = 0;
    }
    printf("}");
    if (win > 0) {
        double u = tv_s(G.ru_m1.ru_utime) - tv_s(G.ru_m0.ru_utime);
        double s = tv_s(G.ru_m1.ru_stime) - tv_s(G.ru_m0.ru_stime);
        jnum("client_user_s", u);
        jnum("client_sys_s", s);
        jnum("client_cpu_pct", 100.0 * (u + s) / win);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    jnum("client_cpu_total_s", tv_s(ru.ru_utime) + tv_s(ru.ru_stime));
    jint("client_maxrss_kib", ru.ru_maxrss);
    jint("nofile_limit", O.nofile);
    jint("source_addresses", O.nbinds ? O.nbinds : 1);
    printf("}\n");
    fflush(stdout);
}

/* ---------------------------------------------------------- setup, main */

static void parse_url(target_t *t, const char *url)
{
    t->url = url;
    if (strncmp(url, "ws://", 5) != 0) usage_error("only ws:// URLs are supported");
    const char *h = url + 5;
    const char *slash = strchr(h, '/');
    size_t hostport_len = slash ? (size_t)(slash - h) : strlen(h);
    char hp[96];
    if (hostport_len == 0 || hostport_len >= sizeof hp) usage_error("bad URL host");
    memcpy(hp, h, hostport_len);
    hp[hostport_len] = 0;
    snprintf(t->path, sizeof t->path, "%s", slash ? slash : "/");
    for (const char *q = url; *q; q++)
        if ((unsigned char)*q < 0x21 || *q == '"' || *q == '\\' || (unsigned char)*q > 0x7e)
            usage_error("URL must be printable ASCII without spaces, quotes or backslashes");

    char host[64];
    const char *portstr;
    if (hp[0] == '[') {
        const char *rb = strchr(hp, ']');
        if (!rb || (size_t)(rb - hp - 1) >= sizeof host) usage_error("bad URL host");
        memcpy(host, hp + 1, (size_t)(rb - hp - 1));
        host[rb - hp - 1] = 0;
        portstr = rb[1] == ':' ? rb + 2 : NULL;
    } else {
        const char *colon = strchr(hp, ':');
        size_t hl = colon ? (size_t)(colon - hp) : strlen(hp);
        if (hl >= sizeof host) usage_error("bad URL host");
        memcpy(host, hp, hl);
        host[hl] = 0;
        portstr = colon ? colon + 1 : NULL;
    }
    long port = portstr ? strtol(portstr, NULL, 10) : 80;
    if (port <= 0 || port > 65535) usage_error("bad URL port");

    /* Loopback only: this tool must never load anything but this machine. */
    memset(&t->addr, 0, sizeof t->addr);
    if (strcmp(host, "127.0.0.1") == 0 || strcmp(host, "localhost") == 0) {
        struct sockaddr_in *a = (struct sockaddr_in *)&t->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        t->addrlen = sizeof *a;
    } else if (strcmp(host, "::1") == 0) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&t->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_addr = in6addr_loopback;
        t->addrlen = sizeof *a;
    } else {
        usage_error("only 127.0.0.1, localhost and [::1] are allowed");
    }
    snprintf(t->host_hdr, sizeof t->host_hdr, "%s", hp);
}

static void build_handshake(target_t *t)
{
    int n = snprintf(t->hs_req, sizeof t->hs_req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n",
                     t->path, t->host_hdr, WS_KEY);
    if (O.subprotocol && n > 0 && (size_t)n < sizeof t->hs_req)
        n += snprintf(t->hs_req + n, sizeof t->hs_req - (size_t)n,
                      "Sec-WebSocket-Protocol: %s\r\n", O.subprotocol);
    for (int i = 0; i < O.nheaders && n > 0 && (size_t)n < sizeof t->hs_req; i++)
        n += snprintf(t->hs_req + n, sizeof t->hs_req - (size_t)n, "%s\r\n", O.headers[i]);
    if (n > 0 && (size_t)n < sizeof t->hs_req)
        n += snprintf(t->hs_req + n, sizeof t->hs_req - (size_t)n, "\r\n");
    if (n <= 0 || (size_t)n >= sizeof t->hs_req) usage_error("handshake request too long");
    t->hs_len = (size_t)n;
}

/* Each connection needs a descriptor; raise the soft (and, as root, the hard)
 * limit rather than failing with EMFILE halfway through. */
static void raise_nofile(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur < (rlim_t)need) {
        if (rl.rlim_max < (rlim_t)need) {
            struct rlimit hard = {(rlim_t)need, (rlim_t)need};
            if (setrlimit(RLIMIT_NOFILE, &hard) == 0) rl = hard;
        }
        rl.rlim_cur = rl.rlim_max < (rlim_t)need ? rl.rlim_max : (rlim_t)need;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    O.nofile = (long)rl.rlim_cur;
}

static void usage(void)
{
    puts(
        "usage: wsload MODE --url ws://127.0.0.1:PORT/PATH [--url ...] [options]\n"
        "  --url may be repeated (up to 16): connection i goes to URL i mod n,\n"
        "  so connections alternate between servers; connection 0 (the\n"
        "  broadcast publisher) goes to the first URL\n"
        "modes:\n"
        "  echo       -c conns, -w messages in flight per conn (closed loop)\n"
        "  latency    -c conns, -r total msg/s (open loop, latency from schedule)\n"
        "  broadcast  -c conns, first conn publishes; --pub-window P (closed loop)\n"
        "             or --pub-interval-us U (open loop); server fans out to all\n"
        "  idle       -c conns opened (-k at a time), held --hold seconds\n"
        "  connrate   -c concurrent connect+handshake+close cycles for -d seconds\n"
        "options:\n"
        "  -c, --conns N          connections (connrate: concurrent cycles) [100]\n"
        "  -w, --window W         echo: messages in flight per connection [8]\n"
        "  -s, --size S           message body bytes, >= 17 [64]\n"
        "  -d, --duration D       measured seconds [10]\n"
        "      --warmup W         seconds before measuring [2; connrate 1]\n"
        "  -r, --rate R           latency: total messages per second [2000]\n"
        "      --pub-window P     broadcast: publishes outstanding [8]\n"
        "      --pub-interval-us U  broadcast: open loop, one publish every U us\n"
        "      --hold H           idle: seconds held after the last handshake [10]\n"
        "  -k, --concurrency K    handshakes in progress while opening [50]\n"
        "      --wait-first       connrate: wait for a first server message\n"
        "      --close ws|rst     connrate: close handshake, or RST after 101 [ws]\n"
        "      --prefix STR, --suffix STR  wrap every sent message body\n"
        "      --hello STR        text message sent once on open (e.g. Socket.IO 40)\n"
        "      --bind ADDR        source address 127.x.y.z (repeatable, up to 64):\n"
        "                         connection i binds to ADDR i mod n\n"
        "      --binary           send binary frames instead of text\n"
        "      --payload-file F   message body read from F verbatim (-s, --prefix\n"
        "                         and --suffix do not apply); the stamp overwrites\n"
        "                         its first '@' + 16 hex digits, which it must hold\n"
        "      --subprotocol NAME offer Sec-WebSocket-Protocol NAME; the server\n"
        "                         must select it\n"
        "  -H, --header 'K: V'    extra handshake header (repeatable)\n"
        "      --connect-timeout S  per handshake (and connrate first message) [10]\n"
        "      --open-timeout S   whole connection phase [120]\n"
        "      --drain-timeout S  wait for answers after the window [2]\n"
        "      --close-timeout S  close handshake [2]\n"
        "      --deadline S       hard limit on the whole run [computed]\n"
        "      --max-msgs N, --max-cycles N  count bounds [1e9]\n"
        "      --write-per-msg    one send() per message instead of one per\n"
        "                         socket per loop iteration\n"
        "      --quiet            no EVENT lines on stderr\n"
        "output: one JSON object on stdout (see bench/README.md)");
}

static void parse_args(int argc, char **argv)
{
    if (argc < 2) usage_error("missing mode");
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage();
        exit(0);
    }
    int m;
    for (m = 0; m <= M_CONNRATE; m++)
        if (!strcmp(argv[1], MODE_NAMES[m])) break;
    if (m > M_CONNRATE) usage_error("unknown mode");
    O.mode = (enum mode)m;
    O.conns = 100;
    O.window = 8;
    O.size = 64;
    O.duration = 10;
    O.warmup = O.mode == M_CONNRATE ? 1 : 2;
    O.rate = 2000;
    O.pub_window = 8;
    O.hold = 10;
    O.concurrency = 50;
    O.connect_timeout = 10;
    O.open_timeout = 120;
    O.drain_timeout = 2;
    O.close_timeout = 2;
    O.max_msgs = 1000000000LL;
    O.max_cycles = 1000000000LL;

    enum { OPT_WARMUP = 1000, OPT_PUBWIN, OPT_PUBINT, OPT_HOLD, OPT_WAITFIRST,
           OPT_CLOSE, OPT_PREFIX, OPT_SUFFIX, OPT_BINARY, OPT_CTO, OPT_OTO,
           OPT_DTO, OPT_CLTO, OPT_DEADLINE, OPT_MAXMSGS, OPT_MAXCYC, OPT_QUIET,
           OPT_URL, OPT_WPM, OPT_HELLO, OPT_BIND, OPT_PAYLOAD, OPT_SUBPROTO };
    static const struct option lo[] = {
        {"url", required_argument, 0, OPT_URL},
        {"conns", required_argument, 0, 'c'},
        {"window", required_argument, 0, 'w'},
        {"size", required_argument, 0, 's'},
        {"duration", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, OPT_WARMUP},
        {"rate", required_argument, 0, 'r'},
        {"pub-window", required_argument, 0, OPT_PUBWIN},
        {"pub-interval-us", required_argument, 0, OPT_PUBINT},
        {"hold", required_argument, 0, OPT_HOLD},
        {"concurrency", required_argument, 0, 'k'},
        {"wait-first", no_argument, 0, OPT_WAITFIRST},
        {"close", required_argument, 0, OPT_CLOSE},
        {"prefix", required_argument, 0, OPT_PREFIX},
        {"suffix", required_argument, 0, OPT_SUFFIX},
        {"binary", no_argument, 0, OPT_BINARY},
        {"header", required_argument, 0, 'H'},
        {"connect-timeout", required_argument, 0, OPT_CTO},
        {"open-timeout", required_argument, 0, OPT_OTO},
        {"drain-timeout", required_argument, 0, OPT_DTO},
        {"close-timeout", required_argument, 0, OPT_CLTO},
        {"deadline", required_argument, 0, OPT_DEADLINE},
        {"max-msgs", required_argument, 0, OPT_MAXMSGS},
        {"max-cycles", required_argument, 0, OPT_MAXCYC},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"write-per-msg", no_argument, 0, OPT_WPM},
        {"hello", required_argument, 0, OPT_HELLO},
        {"bind", required_argument, 0, OPT_BIND},
        {"payload-file", required_argument, 0, OPT_PAYLOAD},
        {"subprotocol", required_argument, 0, OPT_SUBPROTO},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:w:s:d:r:k:H:h", lo, NULL)) != -1) {
        switch (ch) {
        case OPT_URL:
            if (O.ntargets >= MAX_URLS) usage_error("too many --url (at most 16)");
            O.targets[O.ntargets++].url = optarg;
            break;
        case 'c': O.conns = atoi(optarg); break;
        case 'w': O.window = atoi(optarg); break;
        case 's': O.size = atoi(optarg); break;
        case 'd': O.duration = atof(optarg); break;
        case OPT_WARMUP: O.warmup = atof(optarg); break;
        case 'r': O.rate = atof(optarg); break;
        case OPT_PUBWIN: O.pub_window = atoi(optarg); break;
        case OPT_PUBINT: O.pub_interval_us = atof(optarg); break;
        case OPT_HOLD: O.hold = atof(optarg); break;
        case 'k': O.concurrency = atoi(optarg); break;
        case OPT_WAITFIRST: O.wait_first = 1; break;
        case OPT_CLOSE:
            if (!strcmp(optarg, "rst")) O.close_rst = 1;
            else if (strcmp(optarg, "ws")) usage_error("--close is ws or rst");
            break;
        case OPT_PREFIX: O.prefix = optarg; break;
        case OPT_SUFFIX: O.suffix = optarg; break;
        case OPT_BINARY: O.binary = 1; break;
        case 'H':
            if (O.nheaders >= MAX_HEADERS || strpbrk(optarg, "\r\n"))
                usage_error("bad or too many headers");
            O.headers[O.nheaders++] = optarg;
            break;
        case OPT_CTO: O.connect_timeout = atof(optarg); break;
        case OPT_OTO: O.open_timeout = atof(optarg); break;
        case OPT_DTO: O.drain_timeout = atof(optarg); break;
        case OPT_CLTO: O.close_timeout = atof(optarg); break;
        case OPT_DEADLINE: O.deadline = atof(optarg); break;
        case OPT_MAXMSGS: O.max_msgs = atoll(optarg); break;
        case OPT_MAXCYC: O.max_cycles = atoll(optarg); break;
        case OPT_QUIET: O.quiet = 1; break;
        case OPT_WPM: O.write_per_msg = 1; break;
        case OPT_HELLO:
            if (strlen(optarg) > 125) usage_error("--hello is at most 125 bytes");
            O.hello = optarg;
            break;
        case OPT_BIND: {
            struct sockaddr_in *a = &O.binds[O.nbinds];
            if (O.nbinds >= MAX_BINDS) usage_error("too many --bind (at most 64)");
            memset(a, 0, sizeof *a);
            a->sin_family = AF_INET;
            /* loopback only, like the targets */
            if (inet_pton(AF_INET, optarg, &a->sin_addr) != 1 ||
                (ntohl(a->sin_addr.s_addr) >> 24) != 127)
                usage_error("--bind takes a 127.x.y.z address");
            O.nbinds++;
            break;
        }
        case OPT_PAYLOAD: {
            FILE *pf = fopen(optarg, "rb");
            if (!pf) usage_error("--payload-file cannot be read");
            O.payload = malloc(MAX_MSG_SIZE + 1);
            if (!O.payload) die("out of memory");
            O.payload_len = fread(O.payload, 1, MAX_MSG_SIZE + 1, pf);
            fclose(pf);
            if (O.payload_len < 17 || O.payload_len > MAX_MSG_SIZE)
                usage_error("--payload-file must hold 17..1048576 bytes");
            break;
        }
        case OPT_SUBPROTO:
            /* an RFC 6455 token: printable, no separators */
            if (!*optarg || strlen(optarg) > 128 || strpbrk(optarg, " \t\r\n\",;()<>@:/[]?={}\\"))
                usage_error("--subprotocol must be a token (no spaces or separators)");
            O.subprotocol = optarg;
            break;
        case 'h': usage(); exit(0);
        default: usage_error("bad option");
        }
    }
    if (optind < argc) usage_error("unexpected argument");
    if (O.ntargets == 0) usage_error("--url is required");
    for (int i = 0; i < O.ntargets; i++) parse_url(&O.targets[i], O.targets[i].url);
    if (O.conns < 1 || O.conns > MAX_CONNS) usage_error("-c out of range");
    if (O.window < 1 || O.window > MAX_WINDOW) usage_error("-w out of range");
    if (O.size < 17 || O.size > MAX_MSG_SIZE) usage_error("-s must be 17..1048576");
    if (O.duration <= 0 || O.duration > 3600) usage_error("-d must be in (0, 3600]");
    if (O.warmup < 0 || O.warmup > 600) usage_error("--warmup out of range");
    if (O.rate <= 0 || O.rate > 1e7) usage_error("--rate out of range");
    if (O.pub_window < 1 || O.pub_window > 100000) usage_error("--pub-window out of range");
    if (O.pub_interval_us < 0) usage_error("--pub-interval-us out of range");
    if (O.hold < 0 || O.hold > 3600) usage_error("--hold out of range");
    if (O.concurrency < 1) usage_error("-k out of range");
    if (O.connect_timeout <= 0 || O.open_timeout <= 0 || O.drain_timeout < 0 ||
        O.close_timeout <= 0)
        usage_error("timeouts must be positive");
    if (O.max_msgs < 1 || O.max_cycles < 1) usage_error("count bounds must be >= 1");
    if (O.close_rst && O.mode != M_CONNRATE) usage_error("--close rst is for connrate");
    if (O.payload && (O.prefix || O.suffix))
        usage_error("--payload-file excludes --prefix and --suffix");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile((long)O.conns + 64);
    if (O.nofile < (long)O.conns + 16) die("RLIMIT_NOFILE too low for -c");

    G.nconns = O.conns;
    G.conns = calloc((size_t)G.nconns, sizeof(conn_t));
    G.dirty = calloc((size_t)G.nconns, sizeof(int));
    G.rdbuf = malloc(RD_SIZE);
    if (!G.conns || !G.dirty || !G.rdbuf) die("out of memory");
    for (int i = 0; i < G.nconns; i++) G.conns[i].fd = -1;
    h_init(&G.lat);
    h_init(&G.hs);
    build_frame_template();
    for (int i = 0; i < O.ntargets; i++) build_handshake(&O.targets[i]);
    G.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (G.epfd < 0) die("epoll_create1 failed");
    G.use_pwait2 = 1;
    G.pub_idx = 0;
    if (O.mode == M_LATENCY) G.sched_interval_ns = 1e9 / O.rate;
    if (O.mode == M_BROADCAST && O.pub_interval_us > 0)
        G.sched_interval_ns = O.pub_interval_us * 1000.0;

    G.t_start = now_ns();
    G.last_scan = G.t_start;
    double budget = O.deadline > 0 ? O.deadline
                                   : O.open_timeout + O.warmup + O.duration + O.hold +
                                         O.drain_timeout + O.close_timeout + 15.0;
    G.hard_deadline = G.t_start + sec_to_ns(budget);

    if (O.mode == M_CONNRATE) {
        G.t_all_open = G.t_start; /* no connect phase: cycles start at once */
        start_load(G.t_start);
    } else {
        G.phase = PH_CONNECT;
    }

    struct epoll_event evs[MAX_EVENTS];
    while (G.phase != PH_DONE) {
        int64_t now = now_ns();
        if (now >= G.hard_deadline) {
            G.deadline_hit = 1;
            if (G.phase < PH_DRAIN && G.t_m0 && !G.t_m1) {
                G.t_m1 = now;
                getrusage(RUSAGE_SELF, &G.ru_m1);
            }
            break;
        }
        tick(now);
        flush_dirty(now);
        if (G.phase == PH_DONE) break;
        int n = wait_events(evs, wait_budget(now_ns()));
        if (n < 0 && errno != EINTR) die("epoll_wait failed");
        now = now_ns();
        for (int i = 0; i < n; i++) on_event(evs[i].data.u64, evs[i].events, now);
        flush_dirty(now);
    }
    int64_t t_end = now_ns();
    for (int i = 0; i < G.nconns; i++) conn_release(&G.conns[i]);
    print_result(t_end); /* may set G.fatal */
    return G.fatal ? 1 : 0;
}
