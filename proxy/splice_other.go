//go:build !linux

package proxy

import (
	"errors"
	"syscall"
)

// canSplice is false: elsewhere tunnels are copied through the gateway.
const canSplice = false

type kernelPipe struct{ buffered int }

func (p *kernelPipe) release() {}

func spliceIn(syscall.RawConn, int) (*kernelPipe, int, error) { return nil, 0, errors.ErrUnsupported }

func spliceOut(syscall.RawConn, *kernelPipe) (int, error) { return 0, errors.ErrUnsupported }
