/*
 * trace-reader: copy L1's ftrace trace_pipe to stdout in batches, keeping a backlog.
 *
 * Why not `cat trace_pipe`: a reader that keeps up with the writer wakes for every few events and reads the ring
 * buffer's page while events are still being committed to it; on 6.12 that cut events short and lost whole
 * events silently (1-3 % of lines, measured; docs/trace-oracle.md).  This reader opens the pipe non-blocking,
 * drains everything there is, then sleeps INTERVAL_MS before the next drain, so it meets the writer once per
 * interval instead of once per event.  The ring buffer (16 MiB) holds far more than one interval of events.
 *
 * Usage: trace-reader [INTERVAL_MS] [PATH]   (defaults: 100, /sys/kernel/tracing/trace_pipe)
 * Ends on SIGTERM/SIGINT (after finishing the current write) or when stdout closes.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int write_all(const char *buf, ssize_t n)
{
	while (n > 0) {
		ssize_t w = write(STDOUT_FILENO, buf, (size_t)n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		n -= w;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static char buf[1 << 16];
	long interval_ms = argc > 1 ? strtol(argv[1], NULL, 10) : 100;
	const char *path = argc > 2 ? argv[2] : "/sys/kernel/tracing/trace_pipe";
	struct timespec nap = { interval_ms / 1000, (interval_ms % 1000) * 1000000L };
	struct sigaction sa = { .sa_handler = on_signal };
	int fd = open(path, O_RDONLY | O_NONBLOCK);

	if (fd < 0) {
		perror(path);
		return 1;
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	while (!stop) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n > 0) {
			if (write_all(buf, n) < 0)
				return 0; /* the consumer went away */
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			perror("read");
			return 1;
		}
		nanosleep(&nap, NULL); /* drained: let a backlog build up */
	}
	return 0;
}
