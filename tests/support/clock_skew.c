/* clock_skew.c: a preload library that sets this process's wall clock apart by
 * CP_CLOCK_SKEW_SECONDS (a float, either sign), as a host whose clock is wrong would be.
 *
 * Only the wall clock moves (CLOCK_REALTIME, its coarse variant, gettimeofday, time): the
 * monotonic clock, sleeps and timeouts are left alone, as on a real host. Built and preloaded by
 * tests/support/hosts.py. (Debian 12's libfaketime 0.9.10 breaks Python 3.11's time.sleep with
 * its monotonic clock left alone, libfaketime#426, and hangs Python's thread waits with it
 * faked, libfaketime#390.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long skew_ns(void) {
    static int known;
    static long long skew;
    if (!known) {
        const char *value = getenv("CP_CLOCK_SKEW_SECONDS");
        skew = value ? (long long)(atof(value) * 1e9) : 0;
        known = 1;
    }
    return skew;
}

int clock_gettime(clockid_t clock, struct timespec *now) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int result = real(clock, now);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        long long ns = now->tv_sec * 1000000000LL + now->tv_nsec + skew_ns();
        now->tv_sec = ns / 1000000000LL;
        now->tv_nsec = ns % 1000000000LL;
    }
    return result;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec now;
    (void)tz;
    clock_gettime(CLOCK_REALTIME, &now);
    if (tv) {
        tv->tv_sec = now.tv_sec;
        tv->tv_usec = now.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (out) *out = now.tv_sec;
    return now.tv_sec;
}
