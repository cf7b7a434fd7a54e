// iscsi-floor: the least an iSCSI target can do per command, to measure the floor of a load on
// this machine: the CPU any target pays per I/O for the sockets, the sleeps and wake-ups and
// the bytes it reads, with none of a storage server's other work. A measuring instrument for
// perf/iscsi.sh, not a target: one connection at a time, no checks, LUN 0 of any name.
//
//   iscsi-floor PORT RAW_IMAGE     serve RAW_IMAGE on 127.0.0.1:PORT (reads from a mapping of
//                                  it, writes into it in place, as tgt does)
//
// What it answers: a Login Request at once with a final Login Response into the full feature
// phase, declaring MaxRecvDataSegmentLength 256 KiB, ImmediateData and no InitialR2T (so that
// writes up to FirstBurstLength, 64 KiB, come whole in the command PDU); TEST UNIT READY and
// any other command with GOOD; READ CAPACITY 16 with the image's size; READ 10/16 with Data-In
// PDUs of at most 256 KiB (what bootstorm's initiator takes), the last one carrying the status,
// their data sent straight from the image's mapping (as bootfarm sends from its mapping);
// WRITE 10/16 of immediate data with one pwrite(2) into the image and GOOD (what tgt does with
// a write, less its threads); a Logout. A write that needs an R2T closes the connection.
//
// The loop: poll(2) until the socket is readable, one recv(2) of whatever is there, every
// whole PDU in it answered, and all the answers in one sendmsg(2) (at most IOV_MAX pieces a
// call): one poll, one receive and one send per batch of commands (and a pwrite per WRITE),
// the least any target does.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

enum { BHS = 48, SEG = 256 << 10, IN_MAX = 4 << 20, PIECES = IOV_MAX, HDRS = PIECES / 2 };

static uint32_t be32(const uint8_t *b) { return (uint32_t)b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3]; }
static uint64_t be64(const uint8_t *b) { return (uint64_t)be32(b) << 32 | be32(b + 4); }
static void put32(uint8_t *b, uint32_t v) { b[0] = v >> 24, b[1] = v >> 16, b[2] = v >> 8, b[3] = v; }

static const char LOGIN_KEYS[] =
    "HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=262144\0InitialR2T=No\0"
    "ImmediateData=Yes\0FirstBurstLength=65536\0MaxBurstLength=262144\0";
static const uint8_t PAD[4];

// The answers of one batch: headers and the pieces (header, data, pad) of one sendmsg.
static struct {
    uint8_t h[HDRS][BHS];
    struct iovec v[PIECES];
    int nh, nv;
} out;

// Sends every piece queued, then forgets them.
static int flush(int fd) {
    struct msghdr m = {.msg_iov = out.v, .msg_iovlen = (size_t)out.nv};
    while (m.msg_iovlen) {
        ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (r < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, -1);
            continue;
        }
        if (r <= 0) return -1;
        for (size_t k = (size_t)r; k;) {  // step the pieces past what went out
            size_t t = k < m.msg_iov->iov_len ? k : m.msg_iov->iov_len;
            m.msg_iov->iov_base = (uint8_t *)m.msg_iov->iov_base + t;
            m.msg_iov->iov_len -= t;
            k -= t;
            if (!m.msg_iov->iov_len) m.msg_iov++, m.msg_iovlen--;
        }
        while (m.msg_iovlen && !m.msg_iov->iov_len) m.msg_iov++, m.msg_iovlen--;
    }
    out.nh = out.nv = 0;
    return 0;
}

// Queues one PDU: a copy of header `h` with its data length, and `len` bytes of `data`.
static int queue(int fd, const uint8_t *h, const void *data, uint32_t len) {
    if (out.nh == HDRS || out.nv + 3 > PIECES) {
        if (flush(fd)) return -1;
    }
    uint8_t *q = out.h[out.nh++];
    memcpy(q, h, BHS);
    q[4] = 0, q[5] = len >> 16, q[6] = len >> 8, q[7] = len;
    out.v[out.nv++] = (struct iovec){q, BHS};
    if (len) out.v[out.nv++] = (struct iovec){(void *)data, len};
    if (len % 4) out.v[out.nv++] = (struct iovec){(void *)PAD, 4 - len % 4};
    return 0;
}

struct conn {
    uint32_t statsn, expcmdsn;
};

// Answers one whole PDU (header `req`, data segment `seg` of `dsl` bytes); -1 ends the
// connection.
static int answer(int c, struct conn *k, const uint8_t *req, uint32_t dsl, const uint8_t *image, int fd, uint64_t size) {
    uint8_t op = req[0] & 0x3f, h[BHS] = {0};
    uint32_t cmdsn = be32(req + 24);
    if (!(req[0] & 0x40)) k->expcmdsn = cmdsn + 1;  // not immediate: CmdSN advances
    else if (op == 0x03) k->expcmdsn = cmdsn;
    memcpy(h + 16, req + 16, 4);  // ITT
    put32(h + 28, k->expcmdsn);
    put32(h + 32, k->expcmdsn + 63);
    switch (op) {
    case 0x03:  // Login Request -> final Login Response, to the full feature phase
        h[0] = 0x23;
        h[1] = 0x80 | (req[1] & 0x0c) | 3;
        memcpy(h + 8, req + 8, 6);  // ISID
        h[15] = 1;                  // TSIH
        put32(h + 24, k->statsn++);
        return queue(c, h, LOGIN_KEYS, sizeof LOGIN_KEYS - 1);
    case 0x01: {  // SCSI Command
        const uint8_t *cdb = req + 32;
        uint32_t edtl = be32(req + 20);
        static uint8_t cap[32];
        if (cdb[0] == 0x9e) {  // READ CAPACITY 16: one Data-In with the status
            uint64_t last = size / 512 - 1;
            for (int i = 0; i < 8; i++) cap[i] = last >> (56 - 8 * i);
            put32(cap + 8, 512);
            h[0] = 0x25, h[1] = 0x81;
            put32(h + 20, 0xffffffff);
            put32(h + 24, k->statsn++);
            return queue(c, h, cap, edtl < sizeof cap ? edtl : sizeof cap);
        }
        if (cdb[0] == 0x28 || cdb[0] == 0x88) {  // READ 10/16: Data-In PDUs, status in the last
            uint64_t lba = cdb[0] == 0x28 ? be32(cdb + 2) : be64(cdb + 2);
            if (edtl == 0 || lba * 512 + edtl > size) return -1;
            h[0] = 0x25;
            put32(h + 20, 0xffffffff);
            for (uint32_t off = 0, sn = 0; off < edtl; off += SEG, sn++) {
                uint32_t n = edtl - off < SEG ? edtl - off : SEG;
                int last = off + n == edtl;
                h[1] = last ? 0x81 : 0;
                put32(h + 24, last ? k->statsn++ : 0);
                put32(h + 36, sn);
                put32(h + 40, off);
                if (queue(c, h, image + lba * 512 + off, n)) return -1;
            }
            return 0;
        }
        if (cdb[0] == 0x2a || cdb[0] == 0x8a) {  // WRITE 10/16, whole in the command PDU
            uint64_t lba = cdb[0] == 0x2a ? be32(cdb + 2) : be64(cdb + 2);
            if (dsl != edtl || lba * 512 + edtl > size) return -1;  // not whole: needs an R2T
            if (pwrite(fd, req + BHS, edtl, (off_t)(lba * 512)) != (ssize_t)edtl) return -1;
        }
        h[0] = 0x21, h[1] = 0x80;  // SCSI Response, GOOD
        put32(h + 24, k->statsn++);
        return queue(c, h, NULL, 0);
    }
    case 0x06:  // Logout
        h[0] = 0x26, h[1] = 0x80;
        put32(h + 24, k->statsn++);
        queue(c, h, NULL, 0);
        flush(c);
        return -1;
    case 0x00:  // NOP-Out: a ping (ITT set) gets a NOP-In
        if (be32(req + 16) == 0xffffffff) return 0;
        h[0] = 0x20, h[1] = 0x80;
        memcpy(h + 8, req + 8, 8);
        put32(h + 20, 0xffffffff);
        put32(h + 24, k->statsn++);
        return queue(c, h, NULL, 0);
    default:
        return -1;
    }
}

static void serve(int c, const uint8_t *image, int fd, uint64_t size) {
    static uint8_t in[IN_MAX];
    size_t have = 0;
    struct conn k = {1, 0};
    out.nh = out.nv = 0;
    for (;;) {
        struct pollfd p = {.fd = c, .events = POLLIN};
        if (poll(&p, 1, -1) != 1) return;
        ssize_t r = recv(c, in + have, IN_MAX - have, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN)) return;
        if (r < 0) continue;
        have += (size_t)r;
        size_t at = 0;
        while (have - at >= BHS) {
            const uint8_t *req = in + at;
            uint32_t dsl = (uint32_t)req[5] << 16 | req[6] << 8 | req[7];
            size_t whole = BHS + (size_t)req[4] * 4 + ((dsl + 3) & ~3u);
            if (req[4] || whole > IN_MAX) return;  // no AHS
            if (have - at < whole) break;
            if (answer(c, &k, req, dsl, image, fd, size)) return;
            at += whole;
        }
        if (flush(c)) return;
        memmove(in, in + at, have - at);
        have -= at;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT RAW_IMAGE\n", argv[0]);
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = open(argv[2], O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || st.st_size < 1024) {
        perror(argv[2]);
        return 1;
    }
    const uint8_t *image = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (image == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (l < 0) return 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) {
        perror("bind/listen");
        return 1;
    }
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) return 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(c, image, fd, (uint64_t)st.st_size);
        close(c);
    }
}
