/*
 * loadgen: send N signals through one chosen raw syscall, as fast as possible or paced.
 *
 * Benchmark tooling for sigscope (not part of the installed package). Build with
 *   cc -O2 -Wall -pthread -o loadgen loadgen.c
 * Usage:
 *   loadgen --via kill|tkill|tgkill|rt_sigqueueinfo|rt_tgsigqueueinfo|pidfd_send_signal|getppid
 *           --count N [--rate R] [--signal N]
 *
 * The signal is set to SIG_IGN process-wide before anything is sent, so every send is
 * generated (the signal:signal_generate tracepoint fires) and then dropped as ignored:
 * the kernel's fast path, which makes the tracer's cost per signal as visible as possible.
 * Process-directed sends target our own pid; thread-directed sends target a sibling thread
 * that just waits. One JSON line is printed on stdout at the end.
 *
 * --via getppid sends no signal: it calls getppid(2) N times, an unrelated syscall whose cost
 * shows what a tracer adds to every syscall of every task (while any syscall tracepoint has a
 * user, every task's syscalls take the syscall-work path on entry and exit). Its "sent" counts
 * the calls.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

static const char *const VIAS[] = {"kill", "tkill", "tgkill", "rt_sigqueueinfo",
                                   "rt_tgsigqueueinfo", "pidfd_send_signal", "getppid"};
enum via {
    KILL, TKILL, TGKILL, RT_SIGQUEUEINFO, RT_TGSIGQUEUEINFO, PIDFD_SEND_SIGNAL, GETPPID, NVIAS
};

static int tid_pipe[2];  /* sibling -> main: the sibling's tid */
static int quit_pipe[2]; /* main closes the write end to let the sibling exit */

static void *sibling(void *unused)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    char byte;

    (void)unused;
    if (write(tid_pipe[1], &tid, sizeof(tid)) != sizeof(tid))
        return NULL;
    while (read(quit_pipe[0], &byte, 1) < 0 && errno == EINTR)
        ;
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double deadline)
{
    struct timespec ts = {(time_t)deadline, (long)((deadline - (time_t)deadline) * 1e9)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s --via kill|tkill|tgkill|rt_sigqueueinfo|rt_tgsigqueueinfo|"
            "pidfd_send_signal|getppid --count N [--rate R] [--signal N]\n",
            prog);
    exit(2);
}

int main(int argc, char **argv)
{
    int via = -1, sig = SIGUSR1, pidfd = -1;
    long long count = -1, rate = 0, sent = 0, failed = 0;
    int first_errno = 0;

    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            usage(argv[0]);
        const char *opt = argv[i], *val = argv[i + 1];
        if (!strcmp(opt, "--via")) {
            for (int v = 0; v < NVIAS; v++)
                if (!strcmp(val, VIAS[v]))
                    via = v;
        } else if (!strcmp(opt, "--count")) {
            count = atoll(val);
        } else if (!strcmp(opt, "--rate")) {
            rate = atoll(val);
        } else if (!strcmp(opt, "--signal")) {
            sig = atoi(val);
        } else {
            usage(argv[0]);
        }
    }
    if (via < 0 || count < 0 || rate < 0 || sig <= 0 || sig > SIGRTMAX || sig == SIGKILL ||
        sig == SIGSTOP)
        usage(argv[0]);

    if (signal(sig, SIG_IGN) == SIG_ERR) {
        perror("loadgen: signal");
        return 1;
    }
    pthread_t thread;
    pid_t pid = getpid(), tid;
    if (pipe(tid_pipe) || pipe(quit_pipe) || pthread_create(&thread, NULL, sibling, NULL) ||
        read(tid_pipe[0], &tid, sizeof(tid)) != sizeof(tid)) {
        perror("loadgen: starting the sibling thread");
        return 1;
    }
    if (via == PIDFD_SEND_SIGNAL && (pidfd = (int)syscall(SYS_pidfd_open, pid, 0)) < 0) {
        perror("loadgen: pidfd_open");
        return 1;
    }
    /* A queued siginfo as sigqueue(3) would build it; SI_QUEUE is allowed for any target. */
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    info.si_signo = sig;
    info.si_code = SI_QUEUE;
    info.si_pid = pid;
    info.si_uid = getuid();

    /* Paced mode sends in batches of ~1 ms worth of signals against absolute deadlines,
     * so sleeping late never accumulates into a lower average rate. */
    long long batch = rate > 0 ? (rate / 1000 > 0 ? rate / 1000 : 1) : count;
    double start = now_s();
    for (long long done = 0; done < count;) {
        if (rate > 0)
            sleep_until(start + (double)done / (double)rate);
        long long end = done + batch < count ? done + batch : count;
        for (; done < end; done++) {
            long rc;
            switch (via) {
            case KILL: rc = syscall(SYS_kill, pid, sig); break;
            case TKILL: rc = syscall(SYS_tkill, tid, sig); break;
            case TGKILL: rc = syscall(SYS_tgkill, pid, tid, sig); break;
            case RT_SIGQUEUEINFO: rc = syscall(SYS_rt_sigqueueinfo, pid, sig, &info); break;
            case RT_TGSIGQUEUEINFO:
                rc = syscall(SYS_rt_tgsigqueueinfo, pid, tid, sig, &info);
                break;
            case PIDFD_SEND_SIGNAL:
                rc = syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
                break;
            default: rc = syscall(SYS_getppid) < 0 ? -1 : 0; break; /* returns a pid */
            }
            if (rc == 0) {
                sent++;
            } else {
                failed++;
                if (!first_errno)
                    first_errno = errno;
            }
        }
    }
    double elapsed = now_s() - start;

    close(quit_pipe[1]);
    pthread_join(thread, NULL);
    if (first_errno)
        fprintf(stderr, "loadgen: %s failed: %s\n", VIAS[via], strerror(first_errno));
    printf("{\"via\": \"%s\", \"sent\": %lld, \"failed\": %lld, \"elapsed_s\": %.6f, "
           "\"rate\": %.1f}\n",
           VIAS[via], sent, failed, elapsed, elapsed > 0 ? (double)sent / elapsed : 0.0);
    return failed ? 1 : 0;
}
