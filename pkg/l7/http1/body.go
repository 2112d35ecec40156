package http1

import (
	"bufio"
	"errors"
	"io"
)

// Limits on the parts of a chunked body that are lines.
const (
	maxChunkLine    = 4 << 10 // chunk size and extensions
	maxTrailerBytes = 64 << 10
)

// errTruncated reports a body the sender ended early.
var errTruncated = errors.New("connection closed inside a message body")

// copyBody copies one message body delimited by f from src to dst (which
// may be io.Discard), as the sender framed it. Chunked bodies are checked
// chunk by chunk, since their framing is what a smuggling attempt
// disguises; chunk lines are forwarded normalised to CRLF like head
// lines. Reads go through src's buffer, so no copy buffer is needed.
//
// net/http's chunked reader would decode the body; a transparent proxy
// has to keep the framing (and extensions and trailers) as it is.
func copyBody(dst io.Writer, src *bufio.Reader, f framing, scratch *[]byte) error {
	switch f.kind {
	case bodyNone:
		return nil
	case bodyLength:
		return copyN(dst, src, f.n)
	case bodyChunked:
		return copyChunked(dst, src, scratch)
	case bodyClose:
		_, err := io.Copy(dst, src)
		return err
	}
	return nil
}

// copyN copies exactly n bytes.
func copyN(dst io.Writer, src *bufio.Reader, n int64) error {
	for n > 0 {
		if src.Buffered() == 0 {
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					return errTruncated
				}
				return err
			}
		}
		k := min(int64(src.Buffered()), n)
		b, _ := src.Peek(int(k))
		if _, err := dst.Write(b); err != nil {
			return err
		}
		_, _ = src.Discard(int(k))
		n -= k
	}
	return nil
}

// copyChunked copies a chunked body including its trailer section.
func copyChunked(dst io.Writer, src *bufio.Reader, scratch *[]byte) error {
	for {
		line, n, err := appendLine((*scratch)[:0], src, maxChunkLine)
		*scratch = line
		if err != nil {
			return chunkError(err)
		}
		size, ok := parseChunkSize(line[:n])
		if !ok {
			return errorf("bad chunk size line")
		}
		if _, err := dst.Write(line); err != nil {
			return err
		}
		if size == 0 {
			break
		}
		if err := copyN(dst, src, size); err != nil {
			return err
		}
		crlf, err := src.Peek(2)
		if err != nil {
			return chunkError(err)
		}
		if crlf[0] != '\r' || crlf[1] != '\n' {
			return errorf("chunk data not followed by CRLF")
		}
		if _, err := dst.Write(crlf); err != nil {
			return err
		}
		_, _ = src.Discard(2)
	}
	// Trailer section: field lines up to an empty line.
	budget := maxTrailerBytes
	for {
		line, n, err := appendLine((*scratch)[:0], src, budget)
		*scratch = line
		if err != nil {
			return chunkError(err)
		}
		if n > 0 {
			if _, err := parseField(line, 0, n); err != nil {
				return err
			}
		}
		if _, err := dst.Write(line); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		budget -= len(line)
	}
}

func chunkError(err error) error {
	switch {
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		return errTruncated
	case err == errLineTooLong:
		return errorf("chunk line or trailer section too long")
	case err == errBareCR:
		return errorf("bare CR in chunked framing")
	}
	return err
}

// parseChunkSize parses "chunk-size [ chunk-ext ]" (RFC 9112 §7.1): hex
// digits, then optionally whitespace and extensions introduced by ';'.
// Anything else (signs, "0x", spaces inside the number, a size that
// overflows) is refused.
func parseChunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		d, ok := unhex(line[i])
		if !ok {
			break
		}
		if i >= 15 {
			return 0, false // larger than any sane body; avoids overflow
		}
		n = n<<4 | int64(d)
	}
	if i == 0 {
		return 0, false
	}
	rest := line[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	switch {
	case len(rest) == 0 && i == len(line):
		return n, true
	case len(rest) == 0 || rest[0] != ';':
		return 0, false // whitespace is allowed only before extensions
	}
	for _, c := range rest {
		if !isValueChar(c) {
			return 0, false
		}
	}
	return n, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
