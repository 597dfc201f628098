package ec2fake

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cgroups"
)

// scriptSpec is how to run one instance's user-data script.
type scriptSpec struct {
	path     string // the script, executed as cloud-init does (its #! line picks the interpreter)
	netns    string
	hostname string
	cgroups  []string
	binds    string // privateDirs[i] is bind-mounted from binds+privateDirs[i]
	output   string
	env      []string
}

// holdAndExec is the first program of every script: it waits for one line on fd 3 (written
// once it sits in the instance's cgroup), closes fd 3 and becomes the script. The shell forks
// nothing before that, so nothing of the instance escapes its cgroup.
const holdAndExec = `read -r _ <&3; exec 3<&-; exec "$0"`

// startScript starts the script as root in the instance's netns, a new UTS namespace named
// hostname and a private mount namespace (see privateDirs), in its own session, inside the
// instance's cgroups, with its output appended to spec.output. exited is called with its
// exit code when it ends.
//
// The namespaces are entered on a locked OS thread that the child is cloned from (setns for
// the netns, never `ip netns exec`, which remounts /sys); the thread has its own mount
// namespace afterwards and is never returned to the runtime's pool: its goroutine ends
// locked, so the runtime discards it.
func startScript(spec scriptSpec, exited func(code int)) error {
	out, err := os.OpenFile(spec.output, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening the script's output: %w", err)
	}
	defer out.Close()
	hold, release, err := os.Pipe()
	if err != nil {
		return err
	}
	defer hold.Close()
	defer release.Close()
	cmd := exec.Command("/bin/sh", "-c", holdAndExec, spec.path)
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}, spec.env...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{hold}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread leaves with namespaces of its own.
		errc <- startInInstance(cmd, spec)
	}()
	if err := <-errc; err != nil {
		return err
	}
	hold.Close()
	pid := cmd.Process.Pid
	if err := cgroups.Join(spec.cgroups, pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return err
	}
	if _, err := release.Write([]byte("go\n")); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("releasing the user-data script: %w", err)
	}
	go func() {
		err := cmd.Wait()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
		}
		if f, err := os.OpenFile(spec.output, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			fmt.Fprintf(f, "ec2fake: user data script %s exited with code %d\n", spec.path, code)
			f.Close()
		}
		exited(code)
	}()
	return nil
}

// startInInstance moves this (locked) thread into the instance's namespaces and starts cmd.
func startInInstance(cmd *exec.Cmd, spec scriptSpec) error {
	ns, err := netns.GetFromName(spec.netns)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", spec.netns, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("entering netns %s: %w", spec.netns, err)
	}
	if err := unix.Unshare(unix.CLONE_NEWUTS | unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("creating UTS and mount namespaces: %w", err)
	}
	if err := unix.Sethostname([]byte(spec.hostname)); err != nil {
		return fmt.Errorf("setting hostname %q: %w", spec.hostname, err)
	}
	// Nothing mounted here propagates back to the host.
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making / a slave mount: %w", err)
	}
	for _, d := range privateDirs {
		src := filepath.Join(spec.binds, d)
		if err := unix.Mount(src, d, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting %s on %s: %w", src, d, err)
		}
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755"); err != nil {
		return fmt.Errorf("mounting a tmpfs on /run: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the user-data script: %w", err)
	}
	return nil
}
