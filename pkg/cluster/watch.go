package cluster

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// FileSource watches YAML files or directories and publishes a new Snapshot
// whenever their content changes. Polling (rather than inotify) keeps it
// correct for files replaced by rename, edited in place, or on any
// filesystem; the cost is one stat-and-hash per interval.
type FileSource struct {
	Paths    []string
	Interval time.Duration // default 200ms
	Logger   *slog.Logger
}

// Run calls onChange with the first snapshot and then with every changed one,
// until ctx ends. A snapshot that fails to decode is logged and skipped: the
// previous one stays in force, so a half-written file never empties the
// cluster view. Run returns the error of the first load if it fails.
func (f *FileSource) Run(ctx context.Context, onChange func(*Snapshot)) error {
	interval := f.Interval
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// One buffer for every poll's reads: the poll runs five times a
	// second, for as long as the process lives.
	buf := make([]byte, 32<<10)
	sum, err := f.digest(buf)
	if err != nil {
		return err
	}
	snap, err := Load(f.Paths...)
	if err != nil {
		return err
	}
	onChange(snap)
	var lastErr string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		next, err := f.digest(buf)
		if err == nil && next == sum {
			continue
		}
		var s *Snapshot
		if err == nil {
			s, err = Load(f.Paths...)
		}
		if err != nil {
			if err.Error() != lastErr {
				log.Warn("cluster source unreadable; keeping the previous view", "error", err)
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		sum = next
		onChange(s)
	}
}

// digest hashes the names and contents of the files, reading with buf.
func (f *FileSource) digest(buf []byte) ([32]byte, error) {
	h := sha256.New()
	files, err := expand(f.Paths)
	if err != nil {
		return [32]byte{}, err
	}
	for _, name := range files {
		fh, err := os.Open(name)
		if err != nil {
			return [32]byte{}, fmt.Errorf("cluster source: %w", err)
		}
		io.WriteString(h, name)
		h.Write([]byte{0})
		// Hiding (*os.File).WriteTo makes CopyBuffer use buf; WriteTo
		// would allocate a buffer of its own per call.
		_, err = io.CopyBuffer(h, struct{ io.Reader }{fh}, buf)
		fh.Close()
		if err != nil {
			return [32]byte{}, fmt.Errorf("cluster source %s: %w", name, err)
		}
	}
	var out [32]byte
	h.Sum(out[:0])
	return out, nil
}

// WriteFile atomically replaces path with data (write to a temporary file in
// the same directory, then rename), so a FileSource never reads a torn file.
func WriteFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
