//go:build !linux

package proxy

import (
	"errors"
	"syscall"
)

// canSplice is false: elsewhere tunnels are copied through the gateway.
const canSplice = false

type splicer struct{}

func newSplicer(src, dst syscall.RawConn) *splicer { return &splicer{} }
func (s *splicer) holding() bool                   { return false }
func (s *splicer) in(int) (int, error)             { return 0, errors.ErrUnsupported }
func (s *splicer) out() (int, error)               { return 0, errors.ErrUnsupported }
func (s *splicer) release()                        {}
