//go:build linux

package proxy

import (
	"io"
	"runtime"
	"sync"
	"syscall"

	"github.com/egressgw/egressgw/quota"
)

// canSplice says whether tunnels between two TCP connections are relayed
// by the kernel (splice(2)) rather than through a buffer in the gateway.
const canSplice = true

// kernelPipe is the pipe that splice moves bytes through: socket to pipe,
// pipe to socket, never into the gateway's memory. buffered is what it
// holds that has not been written out yet.
type kernelPipe struct {
	r, w     int
	buffered int
}

// kernelPipes are reused: a tunnel direction takes one only while bytes
// are moving, so an idle tunnel holds none. A pipe the pool drops is
// closed by its cleanup.
var kernelPipes = sync.Pool{New: func() any {
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil
	}
	// A pipe holds 64 KiB unless asked for more; a fast tunnel moves up to
	// a shaper step (1 MiB) per splice. Where the system refuses (a limit on
	// pipe memory), the pipe keeps its default and steps are just smaller.
	_, _ = fcntl(fds[0], syscall.F_SETPIPE_SZ, quota.MaxSpliceStep)
	p := &kernelPipe{r: fds[0], w: fds[1]}
	runtime.AddCleanup(p, closePipeFDs, fds)
	return p
}}

func closePipeFDs(fds [2]int) {
	_ = syscall.Close(fds[0])
	_ = syscall.Close(fds[1])
}

const spliceFlags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// splicer moves one direction of a tunnel, src to dst, through a kernel
// pipe. Its callbacks for the raw connections are bound once, so that a
// step allocates nothing.
type splicer struct {
	src, dst syscall.RawConn
	pipe     *kernelPipe // held only while it holds bytes
	max      int         // the most one fill may move
	moved    int         // what the last callback moved
	err      error       // what the last callback failed with
	fill     func(fd uintptr) bool
	drain    func(fd uintptr) bool
}

func newSplicer(src, dst syscall.RawConn) *splicer {
	s := &splicer{src: src, dst: dst}
	s.fill, s.drain = s.fillPipe, s.drainPipe
	return s
}

// holding reports whether the pipe holds bytes not yet written out.
func (s *splicer) holding() bool { return s.pipe != nil }

// in waits until src is readable, then moves at most max bytes from it
// into a pipe taken from the pool, in one splice call: whatever has
// arrived, so an interactive exchange is never held back waiting for more.
// It returns 0 bytes and no error at end of stream. While waiting it holds
// no pipe.
func (s *splicer) in(max int) (int, error) {
	s.max, s.moved, s.err = max, 0, nil
	err := s.src.Read(s.fill)
	if err == nil {
		err = s.err
	}
	if err != nil || s.moved <= 0 {
		s.release()
		return 0, err
	}
	s.pipe.buffered = s.moved
	return s.moved, nil
}

func (s *splicer) fillPipe(fd uintptr) bool {
	if s.pipe == nil {
		if s.pipe, _ = kernelPipes.Get().(*kernelPipe); s.pipe == nil {
			s.err = syscall.EMFILE
			return true
		}
	}
	for {
		n, err := syscall.Splice(int(fd), nil, s.pipe.w, nil, s.max, spliceFlags)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			s.release() // nothing there yet: wait without holding a pipe
			return false
		}
		s.moved, s.err = int(n), err
		return true
	}
}

// out writes what the pipe holds to dst, waiting for dst to take it, and
// returns how much it wrote. On an error the rest stays in the pipe, for
// another try.
func (s *splicer) out() (int, error) {
	s.moved, s.err = 0, nil
	err := s.dst.Write(s.drain)
	if err == nil {
		err = s.err
	}
	if err == nil {
		s.release()
	}
	return s.moved, err
}

func (s *splicer) drainPipe(fd uintptr) bool {
	p := s.pipe
	for p.buffered > 0 {
		n, err := syscall.Splice(p.r, nil, int(fd), nil, p.buffered, spliceFlags)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			s.err = err
			return true
		case n == 0:
			s.err = io.ErrShortWrite
			return true
		}
		p.buffered -= int(n)
		s.moved += int(n)
	}
	return true
}

// release gives an empty pipe back for reuse; one that still holds bytes
// (its direction ended mid-step) is left to its cleanup, since its
// contents belong to no one now.
func (s *splicer) release() {
	if s.pipe != nil && s.pipe.buffered == 0 {
		kernelPipes.Put(s.pipe)
	}
	s.pipe = nil
}
