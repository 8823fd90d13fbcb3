//go:build linux

package proxy

import (
	"io"
	"runtime"
	"sync"
	"syscall"
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
	p := &kernelPipe{r: fds[0], w: fds[1]}
	runtime.AddCleanup(p, closePipeFDs, fds)
	return p
}}

func closePipeFDs(fds [2]int) {
	_ = syscall.Close(fds[0])
	_ = syscall.Close(fds[1])
}

// release gives an empty pipe back for reuse; one that still holds bytes
// (its direction failed mid-step) is left to its cleanup, since its
// contents belong to no one now.
func (p *kernelPipe) release() {
	if p.buffered == 0 {
		kernelPipes.Put(p)
	}
}

const spliceFlags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK

// spliceIn waits until src is readable, then moves at most max bytes from
// it into a pipe taken from the pool, in one splice call: whatever has
// arrived, so an interactive exchange is never held back waiting for more.
// It returns 0 bytes and no error at end of stream. While waiting it holds
// no pipe.
func spliceIn(src syscall.RawConn, max int) (*kernelPipe, int, error) {
	var (
		p    *kernelPipe
		n    int
		serr error
	)
	err := src.Read(func(fd uintptr) bool {
		if p == nil {
			if p, _ = kernelPipes.Get().(*kernelPipe); p == nil {
				serr = syscall.EMFILE
				return true
			}
		}
		for {
			var moved int64
			moved, serr = syscall.Splice(int(fd), nil, p.w, nil, max, spliceFlags)
			n = int(moved)
			if serr != syscall.EINTR {
				break
			}
		}
		if serr == syscall.EAGAIN {
			p.release() // nothing there yet: wait without holding a pipe
			p = nil
			return false
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if err != nil || n <= 0 {
		if p != nil {
			p.release()
		}
		return nil, 0, err
	}
	p.buffered = n
	return p, n, nil
}

// spliceOut writes what p holds to dst, waiting for dst to take it. It
// returns how much it wrote; on an error the rest stays in p.
func spliceOut(dst syscall.RawConn, p *kernelPipe) (int, error) {
	written := 0
	var serr error
	err := dst.Write(func(fd uintptr) bool {
		for p.buffered > 0 {
			n, e := syscall.Splice(p.r, nil, int(fd), nil, p.buffered, spliceFlags)
			switch {
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
				return false
			case e != nil:
				serr = e
				return true
			case n == 0:
				serr = io.ErrShortWrite
				return true
			}
			p.buffered -= int(n)
			written += int(n)
		}
		return true
	})
	if err == nil {
		err = serr
	}
	return written, err
}
