//go:build !unix

package state

import (
	"os"
	"path/filepath"
)

// lockDir only creates the lock file where flock is not available: one
// gateway per state directory is then the operator's to ensure.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
}
