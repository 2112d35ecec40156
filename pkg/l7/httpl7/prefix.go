package httpl7

import "net"

type closeWriter interface{ CloseWrite() error }

// prefixConn replays bytes already read from its Conn before reading on.
// (A bufio.Reader would replay them too, but would stay between the
// inspector and the connection for its whole life, copying every byte.)
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// prefixHalfConn is a prefixConn whose Conn can half-close, which the
// inspectors use when it is there.
type prefixHalfConn struct{ *prefixConn }

func (c prefixHalfConn) CloseWrite() error { return c.Conn.(closeWriter).CloseWrite() }

// withPrefix returns c reading prefix first.
func withPrefix(c net.Conn, prefix []byte) net.Conn {
	if len(prefix) == 0 {
		return c
	}
	pc := &prefixConn{Conn: c, prefix: prefix}
	if _, ok := c.(closeWriter); ok {
		return prefixHalfConn{pc}
	}
	return pc
}
