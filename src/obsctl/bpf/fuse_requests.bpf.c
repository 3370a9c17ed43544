// SPDX-License-Identifier: GPL-2.0
/*
 * Per FUSE connection and opcode: requests, latency histogram, errors by
 * errno, read payload bytes, written and refused bytes (per file handle
 * until flushed: "Written bytes" below) and requesting tasks, aggregated in
 * BPF maps that obsctl (obsctl.collectors.fuse_bpf) reads once per poll.
 *
 * Built by scripts/build-bpf (clang -target bpf -O2 -g, CO-RE, vmlinux.h
 * generated from the build host's /sys/kernel/btf/vmlinux); loaded by
 * obsctl.bpf.libbpf (ctypes over Debian's libbpf.so.1). Never compiled on
 * the target.
 *
 * Two families of hooks; the loader (obsctl.collectors.fuse_bpf) loads one:
 *
 * "tracepoint" (6.12+: the fuse tracepoints of fs/fuse/fuse_trace.h; BTF-typed
 * raw tracepoints, tp_btf, need no ftrace; first choice where present):
 *   start  tp_btf fuse_request_send(const struct fuse_req *req)  when queued
 *   end    tp_btf fuse_request_end(const struct fuse_req *req)   first line of fuse_request_end
 *   (on 6.12-6.17 the send event's request id is 0, which does not matter
 *   here: start and end are paired by the req pointer)
 *
 * "fentry" (5.15+; fentry/fexit need BTF and ftrace direct calls, no kprobes):
 *   start  fentry fuse_simple_request(fm, args)          5.10+ until the idmap change (a global
 *                                                        function of fs/fuse, not exported in 6.1:
 *                                                        Debian's 6.1.176 dev.c:485; in fuse.ko's
 *                                                        BTF, attached there: tests/kernels)
 *          fentry __fuse_simple_request(idmap, fm, args) exported, after it (6.18: fuse_simple_request
 *                                                        is a static inline wrapper in fuse_i.h)
 *          fentry fuse_simple_background(fm, args, gfp)  exported, 5.10+ (6.18: present in BTF)
 *   end    fentry fuse_request_end(req)                  exported, 5.10+ (one argument since the
 *                                                        fuse_mount conversion of 5.10)
 *   drop   fexit of the start functions: a start whose request never reached
 *          fuse_request_end (no slot, connection gone, killed while queued)
 *          is removed and counted (CNT_NOT_SENT).
 *
 * The loader enables exactly one of the two fentry sync start hooks: whichever the
 * running kernel's BTF has (vmlinux, or /sys/kernel/btf/fuse when FUSE is a
 * module). Requests are keyed from start to end by their struct fuse_args
 * pointer: every start function receives it and fuse_request_end reaches it
 * through req->args (fs/fuse/dev.c fuse_args_to_req: "req->args = args").
 * A sync request's args live on the requester's stack until the start
 * function returns; a background request's args until its ->end callback,
 * which fuse_request_end calls after this hook ran.
 *
 * Fields read at the end (fs/fuse/fuse_i.h, struct fuse_req, same names
 * 5.10 through 6.18; read with CO-RE so offsets come from the target's BTF):
 *   req->args             the key above
 *   req->in.h.opcode      set by fuse_args_to_req from args->opcode
 *   req->in.h.len         set when queued (5.15: queue_request_and_unlock;
 *                         6.x: fuse_send_one / fuse_dev_queue_req / io-uring):
 *                         40-byte fuse_in_header + in args, so a WRITE's
 *                         payload is len - 80 (fuse_write_in is 40 bytes)
 *   req->out.h.error      the daemon's answer, or -EIO / -ECONNABORTED /
 *                         -ENOTCONN set by the kernel before calling
 *                         fuse_request_end (fuse_dev_do_write, end_requests)
 *   req->out.h.len        the reply as the daemon wrote it, with its 16-byte
 *                         fuse_out_header: a READ's payload is len - 16
 *   req->fm->fc->dev      the connection: the anonymous device of the
 *                         superblock, major 0, so the value is the N of
 *                         /sys/fs/fuse/connections/N (fs/fuse/control.c
 *                         names the directory "%u" of fc->dev) and of 0:N in
 *                         mountinfo; fuse_trace.h's "connection" is the same
 *                         field.
 *   req->args->in_args[0].value
 *                         the request's first in-arg; for FUSE_WRITE, FUSE_FLUSH,
 *                         FUSE_FSYNC and FUSE_RELEASE a struct whose first field
 *                         is `uint64_t fh`, the daemon's file handle (see
 *                         "Written bytes" below)
 * The same fields, this kernel (6.18), checked with
 * `bpftool btf dump file /sys/kernel/btf/vmlinux format c`; in Debian's
 * linux-source-6.1 6.1.176 (fs/fuse/fuse_i.h:366 args, :376 in.h, :381 out.h,
 * :393 fm, :817 fuse_conn.dev; dev.c:476/478 opcode and args, :229 in.h.len)
 * and loaded, relocated and counted on that kernel booted under QEMU
 * (tests/kernels/test_qemu_kernels.py, docs/metrics.md).
 *
 * Written bytes: counted when the daemon says they are stored, not when it
 * took them. Object-storage drivers answer a WRITE once the bytes are in
 * their buffer and upload at FLUSH (close), FSYNC or RELEASE, and that
 * upload can be refused (403: a read-only key, a bucket policy, a deleted
 * bucket). So per (connection, file handle):
 *   WRITE answered 0          its payload is added to the handle's pending bytes
 *   FLUSH / FSYNC answered 0  the pending bytes become written bytes
 *   FLUSH / FSYNC answered -ENOSYS  nothing: the daemon has no such method
 *                             (the kernel stops sending it: fs/fuse/file.c
 *                             fc->no_flush / fc->no_fsync), RELEASE commits
 *   FLUSH / FSYNC answered another error  the pending bytes become refused
 *                             bytes (the error itself is counted by errno)
 *   RELEASE                   what is left: written when answered 0 (or
 *                             -ENOSYS), refused on another error; the
 *                             handle's entry is removed
 * The file handle is the first u64 of the request's first in-arg,
 * req->args->in_args[0].value, for the four opcodes:
 *   struct fuse_write_in   { uint64_t fh; uint64_t offset; ... }
 *   struct fuse_flush_in   { uint64_t fh; uint32_t unused; ... }
 *   struct fuse_fsync_in   { uint64_t fh; uint32_t fsync_flags; ... }
 *   struct fuse_release_in { uint64_t fh; uint32_t flags; ... }
 * include/uapi/linux/fuse.h (UAPI: fh first since protocol 7.1/7.9): in
 * torvalds/linux at protocol 7.32 (5.10's, commit 031616c434db), in Debian's
 * linux-source-6.1 6.1.176 (fuse.h:699 release_in, :706 flush_in,
 * :725 write_in, :746 fsync_in) and in this kernel's (6.18) BTF; and
 * in_args[0] is that struct: 6.1.176 fs/fuse/file.c:1074 (write,
 * fuse_write_args_fill: &ia->write.in), :545 (fuse_flush: &inarg),
 * :580 (fuse_fsync_common: &inarg), :317 (fuse_prepare_release: &ra->inarg),
 * the same in 6.18 (struct fuse_args.in_args[4] there, [3] before: a
 * CO-RE array, only element 0 is read). The struct lives until the request's
 * end: on the requester's stack until the sync start function returns, in
 * fuse_io_args / fuse_release_args until the ->end callback, which
 * fuse_request_end calls after the hook ran.
 * A handle's entries are bounded by the open files that wrote: the table is
 * a plain hash (an LRU would drop pending bytes silently; a full hash
 * refuses the insert, which is counted: CNT_PENDING_FULL, exported as
 * obsctl_kernel_events_lost_total{part="detail"}) and obsctl drops a
 * connection's entries when it stops watching it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* Local CO-RE flavours: only the fields used, matched by name (the part
 * before ___) against the running kernel's BTF. They keep the build
 * independent of whether the build host's vmlinux BTF has the fuse types
 * (it has not where FUSE is a module). */
struct fuse_in_header___o { __u32 len; __u32 opcode; __u64 unique; } __attribute__((preserve_access_index));
struct fuse_out_header___o { __u32 len; __s32 error; __u64 unique; } __attribute__((preserve_access_index));
struct fuse_conn___o { dev_t dev; } __attribute__((preserve_access_index));
struct fuse_mount___o { struct fuse_conn___o *fc; } __attribute__((preserve_access_index));
struct fuse_in_arg___o { unsigned int size; const void *value; } __attribute__((preserve_access_index));
/* in_args: [3] up to 6.13, [4] since (fs/fuse/fuse_i.h); CO-RE matches arrays by element type */
struct fuse_args___o { __u32 opcode; struct fuse_in_arg___o in_args[1]; } __attribute__((preserve_access_index));
struct fuse_req___o {
	struct fuse_args___o *args;
	struct { struct fuse_in_header___o h; } in;
	struct { struct fuse_out_header___o h; } out;
	struct fuse_mount___o *fm;
} __attribute__((preserve_access_index));

/* FUSE opcodes, include/uapi/linux/fuse.h enum fuse_opcode */
#define FUSE_READ 15
#define FUSE_WRITE 16
#define FUSE_RELEASE 18
#define FUSE_FSYNC 20
#define FUSE_FLUSH 25
#define ENOSYS 38      /* include/uapi/asm-generic/errno.h */
#define IN_HEADER 40   /* sizeof(struct fuse_in_header) */
#define WRITE_IN 40    /* sizeof(struct fuse_write_in) */
#define OUT_HEADER 16  /* sizeof(struct fuse_out_header) */

/* Bucket bounds: obsctl.instruments.LATENCY_BUCKETS_MS in ns, written into
 * the `bounds` map by the loader before attaching (one source of truth). */
#define NBOUNDS 18

struct start {
	__u64 ts;        /* bpf_ktime_get_ns() at the start hook */
	__u32 tid;       /* requesting thread (as the trace_pipe "comm-pid" shows) */
	__u32 conn;
	char comm[16];
};

struct op_key { __u32 conn; __u32 opcode; };
struct op_val {
	__u64 count;            /* ends seen */
	__u64 timed;            /* ends with a start: those in the histogram */
	__u64 lat_sum_ns;
	__u64 read_bytes;       /* READ with error 0: out.h.len - 16 */
	__u64 write_bytes;      /* committed by this opcode (FLUSH, FSYNC, RELEASE): WRITE payloads,
				 * in.h.len - 80 each, the daemon said it stored */
	__u64 refused_bytes;    /* WRITE payloads the daemon took but this FLUSH / FSYNC / RELEASE refused */
	__u64 buckets[NBOUNDS + 1];  /* bucket i: bounds[i-1] < ns <= bounds[i]; last: +Inf */
	__u64 bucket_sum_ns[NBOUNDS + 1];
};
struct err_key { __u32 conn; __u32 opcode; __s32 error; __u32 pad; };
struct who_key { __u32 conn; __u32 tid; char comm[16]; };
struct bounds { __u64 ns[NBOUNDS]; };

struct pend_key { __u32 conn; __u32 pad; __u64 fh; };

enum { CNT_ENDS, CNT_UNSTARTED, CNT_NOT_SENT, CNT_MAP_FULL, CNT_PENDING_FULL, CNT_MAX };

/* connections traced: conn -> 1 (obsctl writes its mount's connection) or
 * CLAIMED (the program claimed it at its FUSE_INIT, see claim_new below) */
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
	 __type(key, __u32); __type(value, __u32); } conns SEC(".maps");
/* in-flight requests: args pointer -> start; LRU bounds it if ends go missing */
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 65536);
	 __type(key, __u64); __type(value, struct start); } starts SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 4096);
	 __type(key, struct op_key); __type(value, struct op_val); } ops SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 4096);
	 __type(key, struct err_key); __type(value, __u64); } errs SEC(".maps");
/* requesting tasks; LRU: a full table forgets the least recently seen */
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 16384);
	 __type(key, struct who_key); __type(value, __u64); } who SEC(".maps");
/* written bytes not yet flushed: (conn, fh) -> bytes (see "Written bytes" above) */
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16384);
	 __type(key, struct pend_key); __type(value, __u64); } pending SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, CNT_MAX);
	 __type(key, __u32); __type(value, __u64); } counters SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
	 __type(key, __u32); __type(value, struct bounds); } bounds SEC(".maps");
/* claimer[0]: the tgid of the obsctl process about to spawn a driver, 0 = none */
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
	 __type(key, __u32); __type(value, __u32); } claimer SEC(".maps");

#define FUSE_INIT 26   /* include/uapi/linux/fuse.h */
#define CLAIMED 2
#define CLAIM_DEPTH 4  /* obsctl -> driver -> fusermount3 (-> its helper): ancestors checked */

/*
 * Counting from the first request (DESIGN section 4): obsctl cannot write its
 * mount's connection into `conns` before the connection exists, and the
 * mount is visible to everyone the moment mount(2) returns. The first request
 * of every FUSE connection is FUSE_INIT, queued by the task that mounts (the
 * driver calling mount(2), or the fusermount3 it runs) inside mount(2),
 * before the mount is attached anywhere: fs/fuse/inode.c fuse_fill_super ->
 * fuse_send_init. So a FUSE_INIT of an unknown connection queued by a
 * descendant of the claimer (obsctl wrote its own tgid before spawning the
 * driver) claims the connection: every later request of it is counted.
 */
struct task_struct___o { int tgid; struct task_struct___o *real_parent; } __attribute__((preserve_access_index));

static __always_inline int claim_new(__u32 conn, __u32 opcode)
{
	if (opcode != FUSE_INIT)
		return 0;
	__u32 zero = 0;
	__u32 *who = bpf_map_lookup_elem(&claimer, &zero);
	if (!who || *who == 0)
		return 0;
	struct task_struct___o *task = (void *)bpf_get_current_task();
	for (int i = 0; i < CLAIM_DEPTH; i++) {  /* a bounded loop: the verifier accepts it since 5.3 */
		if (!task)
			return 0;
		if ((__u32)BPF_CORE_READ(task, tgid) == *who) {
			__u32 claimed = CLAIMED;
			bpf_map_update_elem(&conns, &conn, &claimed, BPF_NOEXIST);
			return 1;
		}
		task = BPF_CORE_READ(task, real_parent);
	}
	return 0;
}

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &which);
	if (v)
		*v += 1;
}

static __always_inline __u32 conn_of_fm(void *fm)
{
	struct fuse_mount___o *m = fm;
	return (__u32)BPF_CORE_READ(m, fc, dev);
}

/* One request started on a watched connection: its time, requesting task and
 * connection, keyed by the request's address (fuse_args for fentry, fuse_req for
 * the tracepoints) until its end. */
static __always_inline int record_start(__u32 conn, __u64 key)
{
	struct start s = {};
	s.ts = bpf_ktime_get_ns();
	s.tid = (__u32)bpf_get_current_pid_tgid();
	s.conn = conn;
	bpf_get_current_comm(&s.comm, sizeof(s.comm));
	bpf_map_update_elem(&starts, &key, &s, BPF_ANY);
	return 0;
}

static __always_inline int on_start(void *fm, void *args)
{
	__u32 conn = conn_of_fm(fm);
	if (!bpf_map_lookup_elem(&conns, &conn)
	    && !claim_new(conn, BPF_CORE_READ((struct fuse_args___o *)args, opcode)))
		return 0;
	return record_start(conn, (__u64)args);
}

static __always_inline int on_return(void *args, long ret, int always)
{
	__u64 key = (__u64)args;
	/* sync: the end hook removed the start unless the request was never
	 * answered; background: only a failed queueing (ret != 0) leaves it */
	if ((always || ret != 0) && bpf_map_delete_elem(&starts, &key) == 0)
		count(CNT_NOT_SENT);
	return 0;
}

SEC("fentry/fuse_simple_request")
int BPF_PROG(sync_start2, void *fm, void *args) { return on_start(fm, args); }
SEC("fexit/fuse_simple_request")
int BPF_PROG(sync_exit2, void *fm, void *args, long ret) { return on_return(args, ret, 1); }
SEC("fentry/__fuse_simple_request")
int BPF_PROG(sync_start3, void *idmap, void *fm, void *args) { return on_start(fm, args); }
SEC("fexit/__fuse_simple_request")
int BPF_PROG(sync_exit3, void *idmap, void *fm, void *args, long ret) { return on_return(args, ret, 1); }
SEC("fentry/fuse_simple_background")
int BPF_PROG(bg_start, void *fm, void *args, unsigned int gfp) { return on_start(fm, args); }
SEC("fexit/fuse_simple_background")
int BPF_PROG(bg_exit, void *fm, void *args, unsigned int gfp, int ret) { return on_return(args, ret, 0); }

static __always_inline int on_tp_send(void *req_ptr)
{
	struct fuse_req___o *req = req_ptr;
	__u32 conn = (__u32)BPF_CORE_READ(req, fm, fc, dev);
	if (!bpf_map_lookup_elem(&conns, &conn) && !claim_new(conn, BPF_CORE_READ(req, in.h.opcode)))
		return 0;
	return record_start(conn, (__u64)req_ptr);
}

/* The daemon's file handle of a WRITE / FLUSH / FSYNC / RELEASE: the first u64 of in_args[0] */
static __always_inline __u64 request_fh(struct fuse_req___o *req)
{
	const void *in = BPF_CORE_READ(req, args, in_args[0].value);
	__u64 fh = 0;
	if (in)
		bpf_probe_read_kernel(&fh, sizeof(fh), in);
	return fh;
}

/* A WRITE's payload the daemon took: pending until its handle is flushed */
static __always_inline void pend(__u32 conn, __u64 fh, __u64 n)
{
	struct pend_key pk = { .conn = conn, .fh = fh };
	__u64 *p = bpf_map_lookup_elem(&pending, &pk);
	if (!p) {
		if (bpf_map_update_elem(&pending, &pk, &n, BPF_NOEXIST) == 0)
			return;
		p = bpf_map_lookup_elem(&pending, &pk);  /* created by another CPU meanwhile */
		if (!p) {
			count(CNT_PENDING_FULL);  /* the table is full: these bytes are not counted */
			return;
		}
	}
	__sync_fetch_and_add(p, n);
}

/* FLUSH / FSYNC / RELEASE answered `error`: the handle's pending bytes go to
 * written or refused (into this CPU's entry `v` of the committing opcode) */
static __always_inline void commit(struct op_val *v, __u32 conn, __u32 opcode, __u64 fh, __s32 error)
{
	struct pend_key pk = { .conn = conn, .fh = fh };
	__u64 *p = bpf_map_lookup_elem(&pending, &pk);
	if (!p)
		return;
	if (error != -ENOSYS || opcode == FUSE_RELEASE) {
		/* atomic exchange (BPF_XCHG, 5.12+): a WRITE ending on another CPU meanwhile
		 * stays pending for the next commit, none is taken twice */
		__u64 n = __sync_lock_test_and_set(p, 0);
		if (error == 0 || error == -ENOSYS)
			v->write_bytes += n;
		else
			v->refused_bytes += n;
	}
	if (opcode == FUSE_RELEASE)
		bpf_map_delete_elem(&pending, &pk);  /* the handle is gone (a later open may reuse its number) */
}

static __always_inline int on_end(struct fuse_req___o *req, __u64 key, __u32 conn)
{
	__u64 now = bpf_ktime_get_ns();
	struct op_key ok = { .conn = conn, .opcode = BPF_CORE_READ(req, in.h.opcode) };
	__s32 error = BPF_CORE_READ(req, out.h.error);
	count(CNT_ENDS);

	struct op_val *v = bpf_map_lookup_elem(&ops, &ok);
	if (!v) {
		struct op_val zero = {};
		/* another CPU may have created it meanwhile: then NOEXIST fails and the lookup finds it */
		bpf_map_update_elem(&ops, &ok, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&ops, &ok);
		if (!v) {
			count(CNT_MAP_FULL);
			bpf_map_delete_elem(&starts, &key);
			return 0;
		}
	}
	v->count += 1;
	if (error == 0) {
		if (ok.opcode == FUSE_READ) {
			__u32 len = BPF_CORE_READ(req, out.h.len);
			if (len > OUT_HEADER)
				v->read_bytes += len - OUT_HEADER;
		} else if (ok.opcode == FUSE_WRITE) {
			__u32 len = BPF_CORE_READ(req, in.h.len);
			if (len > IN_HEADER + WRITE_IN)
				pend(conn, request_fh(req), len - IN_HEADER - WRITE_IN);
		}
	}
	if (ok.opcode == FUSE_FLUSH || ok.opcode == FUSE_FSYNC || ok.opcode == FUSE_RELEASE)
		commit(v, conn, ok.opcode, request_fh(req), error);
	if (error != 0) {
		struct err_key ek = { .conn = conn, .opcode = ok.opcode, .error = error };
		__u64 *e = bpf_map_lookup_elem(&errs, &ek);
		if (!e) {
			__u64 zero = 0;
			bpf_map_update_elem(&errs, &ek, &zero, BPF_NOEXIST);
			e = bpf_map_lookup_elem(&errs, &ek);
		}
		if (e)
			*e += 1;  /* per-CPU value: no other CPU writes it */
		else
			count(CNT_MAP_FULL);
	}

	struct start *s = bpf_map_lookup_elem(&starts, &key);
	if (!s) {
		count(CNT_UNSTARTED);  /* NOTIFY_REPLY, or started before obsctl attached */
		return 0;
	}
	__u64 ns = now - s->ts;
	struct who_key wk = { .conn = conn, .tid = s->tid };
	__builtin_memcpy(wk.comm, s->comm, sizeof(wk.comm));
	bpf_map_delete_elem(&starts, &key);

	__u32 zero_idx = 0;
	struct bounds *b = bpf_map_lookup_elem(&bounds, &zero_idx);
	__u32 idx = 0;
	if (b) {
#pragma unroll
		for (int i = 0; i < NBOUNDS; i++)
			if (ns > b->ns[i])
				idx = i + 1;
	}
	if (idx > NBOUNDS)
		idx = NBOUNDS;
	v->timed += 1;
	v->lat_sum_ns += ns;
	v->buckets[idx] += 1;
	v->bucket_sum_ns[idx] += ns;

	__u64 *w = bpf_map_lookup_elem(&who, &wk);
	if (w) {
		__sync_fetch_and_add(w, 1);
	} else {
		__u64 one = 1;
		if (bpf_map_update_elem(&who, &wk, &one, BPF_NOEXIST)) {
			w = bpf_map_lookup_elem(&who, &wk);  /* created by another CPU meanwhile */
			if (w)
				__sync_fetch_and_add(w, 1);
		}
	}
	return 0;
}

SEC("fentry/fuse_request_end")
int BPF_PROG(request_end, void *req_ptr)
{
	struct fuse_req___o *req = req_ptr;
	__u32 conn = (__u32)BPF_CORE_READ(req, fm, fc, dev);
	if (!bpf_map_lookup_elem(&conns, &conn))
		return 0;
	return on_end(req, (__u64)BPF_CORE_READ(req, args), conn);
}

SEC("tp_btf/fuse_request_send")
int BPF_PROG(tp_send, void *req_ptr) { return on_tp_send(req_ptr); }

SEC("tp_btf/fuse_request_end")
int BPF_PROG(tp_end, void *req_ptr)
{
	struct fuse_req___o *req = req_ptr;
	__u32 conn = (__u32)BPF_CORE_READ(req, fm, fc, dev);
	if (!bpf_map_lookup_elem(&conns, &conn))
		return 0;
	return on_end(req, (__u64)req_ptr, conn);
}
