package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// children tracks the processes started by this process, so that they are
// reaped (no zombies) and their exit is noticed at once. Processes of a lab
// reopened with Load are not our children; they are found through /proc.
type children struct {
	mu sync.Mutex
	m  map[int]*child
}

type child struct {
	done  chan struct{}
	state *os.ProcessState
}

func (c *children) get(pid int) *child {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[pid]
}

// procSpec describes a detached process to start.
type procSpec struct {
	name string
	argv []string
	env  []string
	dir  string
	log  string
	// files are inherited as fds 3, 4, ...
	files []*os.File
}

// start launches spec as a detached process: its own session (so it outlives
// the lab command and can be killed as a group), stdin from /dev/null,
// stdout and stderr appended to the log file.
func (c *children) start(spec procSpec) (*procState, error) {
	if err := os.MkdirAll(filepath.Dir(spec.log), 0o755); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.name, err)
	}
	logf, err := os.OpenFile(spec.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s palisade lab: starting %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(spec.argv, " "))
	cmd := exec.Command(spec.argv[0], spec.argv[1:]...)
	cmd.Env = spec.env
	cmd.Dir = spec.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = spec.files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.name, err)
	}
	ch := &child{done: make(chan struct{})}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[int]*child{}
	}
	c.m[cmd.Process.Pid] = ch
	c.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		ch.state = cmd.ProcessState
		close(ch.done)
	}()
	st, _ := procStartTime(cmd.Process.Pid)
	return &procState{Name: spec.name, PID: cmd.Process.Pid, StartTime: st, Log: spec.log, Argv: spec.argv}, nil
}

// procStat reads a process's state letter and start time from /proc.
func procStat(pid int) (byte, uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return f[0][0], start, nil
}

func procStartTime(pid int) (uint64, error) {
	_, st, err := procStat(pid)
	return st, err
}

// alive reports whether the recorded process still runs (zombies and
// reused PIDs do not count).
func (c *children) alive(p *procState) bool {
	if p == nil || p.PID <= 0 {
		return false
	}
	if ch := c.get(p.PID); ch != nil {
		select {
		case <-ch.done:
			return false
		default:
			return true
		}
	}
	state, start, err := procStat(p.PID)
	if err != nil || state == 'Z' || state == 'X' {
		return false
	}
	return p.StartTime == 0 || start == p.StartTime
}

// exitStatus describes how a child of ours ended, or "" if unknown.
func (c *children) exitStatus(p *procState) string {
	if ch := c.get(p.PID); ch != nil {
		select {
		case <-ch.done:
			if ch.state != nil {
				return ch.state.String()
			}
		default:
		}
	}
	return ""
}

// signal sends sig to the process's group (it leads its own session).
func (c *children) signal(p *procState, sig syscall.Signal) error {
	if !c.alive(p) {
		return nil
	}
	err := unix.Kill(-p.PID, sig)
	if errors.Is(err, unix.ESRCH) {
		err = unix.Kill(p.PID, sig)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %s (pid %d): %w", p.Name, p.PID, err)
	}
	return nil
}

// waitExit waits until the process is gone or ctx ends.
func (c *children) waitExit(ctx context.Context, p *procState) error {
	if ch := c.get(p.PID); ch != nil {
		select {
		case <-ch.done:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%s (pid %d) still running: %w", p.Name, p.PID, ctx.Err())
		}
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for c.alive(p) {
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%s (pid %d) still running: %w", p.Name, p.PID, ctx.Err())
		}
	}
	return nil
}

// stop ends a process: SIGTERM to its group, then SIGKILL after grace.
func (c *children) stop(ctx context.Context, p *procState, grace time.Duration) error {
	if !c.alive(p) {
		return nil
	}
	if err := c.signal(p, unix.SIGTERM); err != nil {
		return err
	}
	gctx, cancel := context.WithTimeout(ctx, grace)
	err := c.waitExit(gctx, p)
	cancel()
	if err == nil {
		return nil
	}
	if err := c.signal(p, unix.SIGKILL); err != nil {
		return err
	}
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return c.waitExit(kctx, p)
}

// killInNetns SIGKILLs every process (other than this one) whose network
// namespace is one of inodes, and waits for them to go. This catches what
// escaped a process group: daemons, "lab exec" leftovers, stray shells.
func killInNetns(ctx context.Context, inodes map[uint64]bool) error {
	if len(inodes) == 0 {
		return nil
	}
	self := os.Getpid()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := pidsInNetns(inodes, self)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("processes %v in lab namespaces survive SIGKILL", pids)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pidsInNetns(inodes map[uint64]bool, self int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		link, err := os.Readlink("/proc/" + e.Name() + "/ns/net")
		if err != nil {
			continue
		}
		// "net:[4026532834]"
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 64)
		if err != nil || !inodes[ino] {
			continue
		}
		if state, _, err := procStat(pid); err != nil || state == 'Z' || state == 'X' {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// logTail returns the last lines of a log file, for error messages.
func logTail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log %s: %v)", path, err)
	}
	defer f.Close()
	const max = 8 << 10
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", path, err)
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	text := strings.TrimRight(string(buf[:n]), "\n")
	all := strings.Split(text, "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	if len(all) == 1 && all[0] == "" {
		return fmt.Sprintf("(log %s is empty)", path)
	}
	return fmt.Sprintf("last lines of %s:\n  %s", path, strings.Join(all, "\n  "))
}
