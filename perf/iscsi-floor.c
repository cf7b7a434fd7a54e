// iscsi-floor: the least an iSCSI target can do per command, to measure the floor of a load on
// this machine: the CPU any target pays per I/O for the sockets, the sleeps and wake-ups and
// the bytes it reads, with none of a storage server's other work. A measuring instrument for
// perf/iscsi.sh, not a target: one connection at a time, no checks, LUN 0 of any name.
//
//   iscsi-floor PORT RAW_IMAGE     serve RAW_IMAGE (mapped read-only) on 127.0.0.1:PORT
//
// What it answers: a Login Request at once with a final Login Response into the full feature
// phase, declaring MaxRecvDataSegmentLength 256 KiB, ImmediateData and no InitialR2T (so that
// writes up to FirstBurstLength, 64 KiB, come whole in the command PDU); TEST UNIT READY and
// anything it does not know with GOOD; READ CAPACITY 16 with the image's size; READ 10/16 with
// one Data-In PDU carrying the status, its data sent straight from the image's mapping (as
// bootfarm sends from its mapping); WRITE 10/16 of immediate data with GOOD, the data dropped
// (a write stores nothing: the floor of a write is receiving it); a Logout. Per command: one
// poll(2), one recv(2) of the header (and one of the data, for a write) and one sendmsg(2).
// A write needing an R2T or a Data-Out closes the connection.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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

enum { BHS = 48, DATA_MAX = 1 << 20 };

static uint32_t be32(const uint8_t *b) { return (uint32_t)b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3]; }
static uint64_t be64(const uint8_t *b) { return (uint64_t)be32(b) << 32 | be32(b + 4); }
static void put32(uint8_t *b, uint32_t v) { b[0] = v >> 24, b[1] = v >> 16, b[2] = v >> 8, b[3] = v; }

// Waits in poll(2), then receives: a blocking recv(2) would sleep inside the socket's lock
// path (sk_wait_data), which the softirq delivering the next command contends for (in a VM a
// paravirtual spinlock's slow path costs more than the rest of the I/O together).
static int recv_all(int fd, uint8_t *b, size_t n) {
    for (size_t got = 0; got < n;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, -1) != 1) return -1;
        ssize_t r = recv(fd, b + got, n - got, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN)) return -1;
        if (r > 0) got += (size_t)r;
    }
    return 0;
}

// Sends the header and `len` bytes of `data` in one sendmsg (looping only on a short send).
static int send_pdu(int fd, uint8_t *h, const uint8_t *data, uint32_t len) {
    h[4] = 0;
    h[5] = len >> 16, h[6] = len >> 8, h[7] = len;
    static const uint8_t pad[4];
    struct iovec v[3] = {{h, BHS}, {(void *)data, len}, {(void *)pad, (4 - len % 4) % 4}};
    size_t left = BHS + len + v[2].iov_len;
    struct msghdr m = {.msg_iov = v, .msg_iovlen = 3};
    while (left) {
        ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (r <= 0) return -1;
        left -= (size_t)r;
        for (size_t k = (size_t)r; k;) {  // step the iovecs past what went out
            size_t t = k < m.msg_iov->iov_len ? k : m.msg_iov->iov_len;
            m.msg_iov->iov_base = (uint8_t *)m.msg_iov->iov_base + t;
            m.msg_iov->iov_len -= t;
            k -= t;
            if (!m.msg_iov->iov_len) m.msg_iov++, m.msg_iovlen--;
        }
    }
    return 0;
}

static const char LOGIN_KEYS[] =
    "HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=262144\0InitialR2T=No\0"
    "ImmediateData=Yes\0FirstBurstLength=65536\0MaxBurstLength=262144\0";

static void serve(int c, const uint8_t *image, uint64_t size) {
    static uint8_t req[BHS], seg[DATA_MAX];
    uint32_t statsn = 1, expcmdsn = 0;
    for (;;) {
        if (recv_all(c, req, BHS)) return;
        uint32_t dsl = (uint32_t)req[5] << 16 | req[6] << 8 | req[7], padded = (dsl + 3) & ~3u;
        if (req[4] || padded > DATA_MAX || (padded && recv_all(c, seg, padded))) return;
        uint8_t op = req[0] & 0x3f, h[BHS] = {0};
        uint32_t cmdsn = be32(req + 24);
        if (!(req[0] & 0x40)) expcmdsn = cmdsn + 1;  // not immediate: CmdSN advances
        else if (op == 0x03) expcmdsn = cmdsn;
        memcpy(h + 16, req + 16, 4);  // ITT
        put32(h + 24, statsn++);
        put32(h + 28, expcmdsn);
        put32(h + 32, expcmdsn + 63);
        switch (op) {
        case 0x03:  // Login Request -> final Login Response, to the full feature phase
            h[0] = 0x23;
            h[1] = 0x80 | (req[1] & 0x0c) | 3;
            memcpy(h + 8, req + 8, 6);  // ISID
            h[15] = 1;                  // TSIH
            if (send_pdu(c, h, (const uint8_t *)LOGIN_KEYS, sizeof LOGIN_KEYS - 1)) return;
            break;
        case 0x01: {  // SCSI Command
            const uint8_t *cdb = req + 32, *data = NULL;
            uint32_t edtl = be32(req + 20), len = 0;
            static uint8_t cap[32];
            if (cdb[0] == 0x9e) {  // READ CAPACITY 16
                uint64_t last = size / 512 - 1;
                for (int i = 0; i < 8; i++) cap[i] = last >> (56 - 8 * i);
                put32(cap + 8, 512);
                data = cap, len = edtl < sizeof cap ? edtl : sizeof cap;
            } else if (cdb[0] == 0x28 || cdb[0] == 0x88) {  // READ 10/16
                uint64_t lba = cdb[0] == 0x28 ? be32(cdb + 2) : be64(cdb + 2);
                if (lba * 512 + edtl > size || edtl > DATA_MAX) return;
                data = image + lba * 512, len = edtl;
            } else if ((cdb[0] == 0x2a || cdb[0] == 0x8a) && dsl != edtl) {
                return;  // a write not whole in its command PDU
            }
            if (len == 0) {  // SCSI Response, GOOD
                h[0] = 0x21;
                h[1] = 0x80;
            } else {  // one Data-In with the status
                h[0] = 0x25;
                h[1] = 0x81;
                put32(h + 20, 0xffffffff);
            }
            if (send_pdu(c, h, data, len)) return;
            break;
        }
        case 0x06:  // Logout
            h[0] = 0x26;
            h[1] = 0x80;
            send_pdu(c, h, NULL, 0);
            return;
        case 0x00:  // NOP-Out: answer a ping (ITT set) with a NOP-In
            if (be32(req + 16) == 0xffffffff) break;
            h[0] = 0x20;
            h[1] = 0x80;
            memcpy(h + 8, req + 8, 8);
            put32(h + 20, 0xffffffff);
            if (send_pdu(c, h, NULL, 0)) return;
            break;
        default:
            return;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT RAW_IMAGE\n", argv[0]);
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = open(argv[2], O_RDONLY);
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
        serve(c, image, (uint64_t)st.st_size);
        close(c);
    }
}
