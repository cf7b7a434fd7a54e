// iscsi-floor: the least an iSCSI target can do per READ, to measure the floor of a
// queue-depth-1 read on this machine: the CPU any target pays per I/O for the sockets, the
// sleep and the wake-ups alone, with none of a storage server's work. A measuring instrument
// for perf/iscsi.sh, not a target: one connection at a time, no checks, no writes, no real
// bytes (every READ answers zeros of the length asked), LUN 0 of any name.
//
//   iscsi-floor PORT BLOCKS       serve a LUN of BLOCKS 512-byte blocks on 127.0.0.1:PORT
//
// What it answers: a Login Request at once with a final Login Response into the full feature
// phase (no keys: an initiator keeps its defaults); TEST UNIT READY with GOOD; READ CAPACITY 16
// with the size; READ 10/16 with one Data-In PDU carrying the data and the status (as bootfarm
// and tgt answer a 4 KiB read); a Logout. Per READ: one blocking recv(2) of the 48-byte
// command and one sendmsg(2) of header and data, so one receive, one send and one sleep per
// I/O. Anything else closes the connection.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum { BHS = 48, DATA_MAX = 1 << 20 };

static uint32_t be32(const uint8_t *b) { return (uint32_t)b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3]; }
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

static void serve(int c, uint64_t blocks) {
    static uint8_t req[BHS], seg[DATA_MAX], zeros[DATA_MAX];
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
            if (send_pdu(c, h, NULL, 0)) return;
            break;
        case 0x01: {  // SCSI Command
            const uint8_t *cdb = req + 32;
            uint32_t edtl = be32(req + 20);
            static uint8_t cap[32];
            const uint8_t *data = zeros;
            if (cdb[0] == 0x9e) {  // READ CAPACITY 16
                uint64_t last = blocks - 1;
                for (int i = 0; i < 8; i++) cap[i] = last >> (56 - 8 * i);
                put32(cap + 8, 512);
                data = cap;
                if (edtl > sizeof cap) edtl = sizeof cap;
            } else if (cdb[0] != 0x28 && cdb[0] != 0x88) {  // TEST UNIT READY and the rest: GOOD
                edtl = 0;
            }
            if (edtl > DATA_MAX) return;
            if (edtl == 0) {  // SCSI Response, GOOD
                h[0] = 0x21;
                h[1] = 0x80;
            } else {  // one Data-In with the status
                h[0] = 0x25;
                h[1] = 0x81;
                put32(h + 20, 0xffffffff);
            }
            if (send_pdu(c, h, data, edtl)) return;
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
        fprintf(stderr, "usage: %s PORT BLOCKS\n", argv[0]);
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    uint64_t blocks = strtoull(argv[2], NULL, 10);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (l < 0 || blocks < 2) return 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) {
        perror("bind/listen");
        return 1;
    }
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) return 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(c, blocks);
        close(c);
    }
}
