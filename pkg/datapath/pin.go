package datapath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// preparePinDir creates dir and its subdirectories when the deepest of its
// existing ancestors is on a bpffs mount (pins live only there), and fails
// without creating anything otherwise.
func preparePinDir(dir string) error {
	existing := dir
	for {
		_, err := os.Stat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pin directory %s: %w", dir, err)
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(existing, &st); err != nil {
		return fmt.Errorf("pin directory %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin directory %s is not on a bpffs mount (%s has fs type %#x; mount one with mount -t bpf bpf /sys/fs/bpf)", dir, existing, st.Type)
	}
	for _, d := range []string{pinMaps, pinProgs, pinLinks} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return fmt.Errorf("pin directory: %w", err)
		}
	}
	return nil
}
