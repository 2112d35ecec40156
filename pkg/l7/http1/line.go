package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// errLineTooLong is returned by appendLine when a line does not fit in the
// remaining budget.
var errLineTooLong = errors.New("line too long")

// errBareCR is returned by appendLine for a CR that does not end a line.
var errBareCR = errors.New("bare CR in line")

// appendLine reads one line from br and appends it to dst, terminated by
// CRLF whatever the sender used (RFC 9112 §2.2 lets a recipient accept a
// bare LF; normalising it means the backend parses exactly the line this
// package parsed). It returns the extended buffer and the length of the
// line's content (without terminator). At most budget bytes (terminator
// included) are accepted. io.EOF is returned only when no byte of the line
// was read; a line cut short by EOF gives io.ErrUnexpectedEOF.
//
// textproto.Reader.ReadLine would do the reading, but it silently accepts
// bare CRs and allocates a string per line; inspection needs the bytes.
func appendLine(dst []byte, br *bufio.Reader, budget int) ([]byte, int, error) {
	start := len(dst)
	for {
		frag, err := br.ReadSlice('\n')
		if len(dst)-start+len(frag) > budget {
			return dst, 0, errLineTooLong
		}
		dst = append(dst, frag...)
		if err == nil {
			break
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			if len(dst) == start {
				return dst, 0, io.EOF
			}
			return dst, 0, io.ErrUnexpectedEOF
		}
		return dst, 0, err
	}
	// dst[start:] ends with '\n'.
	end := len(dst) - 1
	if end > start && dst[end-1] == '\r' {
		end--
	}
	if bytes.IndexByte(dst[start:end], '\r') >= 0 {
		return dst, 0, errBareCR
	}
	dst = append(dst[:end], '\r', '\n')
	return dst, end - start, nil
}
