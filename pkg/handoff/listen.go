package handoff

import "github.com/palisade-net/palisade/internal/unixsock"

// sockListener is the agent's SOCK_SEQPACKET listening socket (see
// unixsock.Listen for how it is created and removed).
type sockListener = unixsock.Listener

// listenSocket creates the agent's handoff socket at path.
func listenSocket(path string) (*sockListener, error) {
	return unixsock.Listen("unixpacket", path)
}
