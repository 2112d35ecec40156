package hbone

import (
	"errors"
	"syscall"
)

// isTemporaryAcceptError reports accept errors worth retrying: running out
// of file descriptors or buffers, or a connection aborted before accept.
func isTemporaryAcceptError(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}
