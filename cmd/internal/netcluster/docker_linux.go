package netcluster

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weft-net/weft/dist/systemd"
)

// DockerOptions make every node a Docker host (Options.Docker). Once a node's weftd has written its env
// file, the node runs weft-docker-opts as weftd.service's ExecStartPost does, then dockerd with the docker
// drop-in's ExecStart (both read from dist/systemd), imports a busybox image and starts one container from
// it, Container (busybox httpd on port 80). The plain container namespace and bridge cbr0 are not made.
//
// dockerd runs inside the node's network namespace (nsenter --net, so /sys and the cgroups stay visible),
// a private mount namespace of its own in which /run, /opt and /etc/docker are empty tmpfs mounts, and a
// PID namespace of its own in which it is process 1 (unshare --pid --kill-child). dockerd and its
// containerd keep their hard-wired paths (/run/docker, /run/containerd, /opt/containerd,
// /etc/docker/key.json) in the tmpfs mounts; every mount they make disappears with the mount namespace;
// and when dockerd dies, however it dies, the kernel kills everything else in its PID namespace (its
// containerd, the shims and the containers), so nothing outlives the cluster, not even after the harness
// is killed. Its data root, exec root, socket, pid file, config file and log are in the node's directory
// (<Dir>/n1/docker); its containers' cgroups are below a parent named after the cluster (see
// Dockerd.CgroupParent). Nothing is changed in the host's network namespace.
type DockerOptions struct {
	// DockerOpts is the weft-docker-opts binary; required.
	DockerOpts string
	// Dockerd is the dockerd binary run for the drop-in's ExecStart command. Empty: the drop-in's command
	// if it is an absolute path that exists, else that name on PATH.
	Dockerd string
	// Docker is the docker command-line client. Empty: docker on PATH.
	Docker string
	// Busybox is the statically linked busybox the image is made from. Empty: busybox on PATH.
	Busybox string
}

// Image is the tag of the busybox image every node imports; Container is the name of each node's container.
const (
	Image     = "weft/busybox:netcluster"
	Container = "c1"
	// BlobSize is the size of /www/blob in the image, served by each container's httpd (see BlobMD5).
	BlobSize = 256 << 10
)

// blob returns /www/blob's content: BlobSize deterministic bytes (a SHA-256 chain).
func blob() []byte {
	b := make([]byte, 0, BlobSize+sha256.Size)
	sum := sha256.Sum256([]byte("weft"))
	for len(b) < BlobSize {
		b = append(b, sum[:]...)
		sum = sha256.Sum256(sum[:])
	}
	return b[:BlobSize]
}

// BlobMD5 is the hex MD5 of /www/blob, what `wget -O - http://IP/blob | md5sum` prints in a container.
func BlobMD5() string {
	s := md5.Sum(blob())
	return hex.EncodeToString(s[:])
}

// BusyboxImage returns a tar of a root filesystem with a static busybox (the applets sh, httpd, wget, ping,
// sleep, ip, cat, md5sum, wc linked to it), /www/index.html, /www/blob and /www/cgi-bin/ip, a CGI script
// that answers with the client's address as the server saw it (REMOTE_ADDR). busybox must be statically
// linked (Debian's busybox-static).
func BusyboxImage(busybox string) ([]byte, error) {
	f, err := elf.Open(busybox)
	if err != nil {
		return nil, fmt.Errorf("busybox image: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			f.Close()
			return nil, fmt.Errorf("busybox image: %s is dynamically linked: install a static busybox (busybox-static)", busybox)
		}
	}
	f.Close()
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("busybox image: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	dir := func(name string) {
		tw.WriteHeader(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now})
	}
	file := func(name string, mode int64, data []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data)), ModTime: now})
		tw.Write(data)
	}
	for _, d := range []string{"bin", "etc", "tmp", "www", "www/cgi-bin"} {
		dir(d)
	}
	file("bin/busybox", 0o755, bin)
	for _, applet := range []string{"sh", "httpd", "wget", "ping", "sleep", "ip", "cat", "md5sum", "wc"} {
		tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: now})
	}
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/:/bin/sh\n"))
	file("etc/group", 0o644, []byte("root:x:0:\n"))
	file("www/index.html", 0o644, []byte("weft\n"))
	file("www/blob", 0o644, blob())
	file("www/cgi-bin/ip", 0o755, []byte("#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n"))
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("busybox image: %w", err)
	}
	return buf.Bytes(), nil
}

// Dockerd is a node's Docker daemon (see DockerOptions).
type Dockerd struct {
	n *Node

	// Dir holds the daemon's state: data/, exec/, docker.sock, docker.pid, daemon.json, dockerd.log.
	Dir string
	// Sock is the API socket; OptsFile is the docker options file weft-docker-opts writes (the drop-in's
	// EnvironmentFile).
	Sock, OptsFile, LogFile string
	// CgroupParent is the parent cgroup of the containers (--cgroup-parent): <prefix>-<node>-docker.
	CgroupParent string

	mu   sync.Mutex // guards all following fields
	proc *proc      // unshare, dockerd's parent (it ignores SIGTERM; SIGKILL takes dockerd along)
	// inner is dockerd itself (PID 1 of its PID namespace; the PID here is the host's), once its API is up.
	inner ProcState
	argv  []string
}

func newDockerd(n *Node) *Dockerd {
	dir := filepath.Join(n.Dir, "docker")
	return &Dockerd{
		n:            n,
		Dir:          dir,
		Sock:         filepath.Join(dir, "docker.sock"),
		OptsFile:     filepath.Join(dir, "docker-opts.env"),
		LogFile:      filepath.Join(dir, "dockerd.log"),
		CgroupParent: n.c.opts.Prefix + "-" + n.Name + "-docker",
	}
}

// Dockerd returns the node's Docker daemon; nil unless the cluster runs with Options.Docker.
func (n *Node) Dockerd() *Dockerd {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.docker
}

// checkDockerHost fails unless the paths the private mount namespace hides exist: a tmpfs can only be
// mounted on an existing directory (Debian's docker.io ships /etc/docker).
func checkDockerHost() error {
	for _, d := range []string{"/run", "/opt", "/etc/docker"} {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			return fmt.Errorf("docker host: %s must be a directory (dockerd's hard-wired state there is hidden behind a tmpfs): %v", d, err)
		}
	}
	return nil
}

// attachDocker makes the node a Docker host once its env file is written: weft-docker-opts, dockerd,
// the image and the container.
func (n *Node) attachDocker(ctx context.Context) error {
	if err := checkDockerHost(); err != nil {
		return err
	}
	d := newDockerd(n)
	n.mu.Lock()
	n.docker = d
	n.mu.Unlock()
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if err := d.WriteOpts(ctx); err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	img, err := n.c.busyboxImage()
	if err != nil {
		return err
	}
	if _, err := d.dockerIn(ctx, bytes.NewReader(img), "import", "-", Image); err != nil {
		return err
	}
	if _, err := d.Docker(ctx, "run", "-d", "--init", "--restart=always", "--name", Container, Image,
		"httpd", "-f", "-p", "80", "-h", "/www"); err != nil {
		return err
	}
	return nil
}

// busyboxImage builds the image tar once per cluster.
func (c *Cluster) busyboxImage() ([]byte, error) {
	c.imageOnce.Do(func() {
		bb := c.opts.Docker.Busybox
		if bb == "" {
			bb, c.imageErr = exec.LookPath("busybox")
			if c.imageErr != nil {
				c.imageErr = fmt.Errorf("busybox image: %w (install busybox-static)", c.imageErr)
				return
			}
		}
		c.image, c.imageErr = BusyboxImage(bb)
	})
	return c.image, c.imageErr
}

// WriteOpts runs weftd.service's ExecStartPost in the node's namespace: weft-docker-opts, with the
// cluster's binary, reading the node's env file (-f) and writing OptsFile instead of /run/flannel/docker.
func (d *Dockerd) WriteOpts(ctx context.Context) error {
	argv, unitFile, err := systemd.DockerOptsCommand()
	if err != nil {
		return err
	}
	argv[0] = d.n.c.opts.Docker.DockerOpts
	for i := range argv {
		if argv[i] == unitFile {
			argv[i] = d.OptsFile
		}
	}
	argv = append(argv, "-f", d.n.EnvFile)
	if _, err := d.n.c.run(ctx, d.n.NS, argv...); err != nil {
		return fmt.Errorf("node %s: weft-docker-opts: %w", d.n.Name, err)
	}
	return nil
}

// Opts returns the docker options file's content.
func (d *Dockerd) Opts() (string, error) {
	b, err := os.ReadFile(d.OptsFile)
	return string(b), err
}

// Command returns the dockerd command line Start runs (without the namespace wrapper): the docker
// drop-in's ExecStart with its variables from OptsFile, with the options that bind dockerd to the host
// replaced by the node's own: -H fd:// (systemd's socket) by -H unix://Sock, --containerd (the host's
// containerd) dropped, so dockerd supervises a containerd of its own under its exec root; then --data-root,
// --exec-root, --pidfile, --config-file (an empty daemon.json) and --cgroup-parent are added. Every other
// option, the ones weft-docker-opts wrote, is passed as it is.
func (d *Dockerd) Command() ([]string, error) {
	opts, err := d.Opts()
	if err != nil {
		return nil, fmt.Errorf("node %s: docker options: %w", d.n.Name, err)
	}
	unit, _, err := systemd.DockerdCommand(opts)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", d.n.Name, err)
	}
	bin := d.n.c.opts.Docker.Dockerd
	if bin == "" {
		if _, err := os.Stat(unit[0]); filepath.IsAbs(unit[0]) && err == nil {
			bin = unit[0]
		} else if bin, err = exec.LookPath(filepath.Base(unit[0])); err != nil {
			return nil, fmt.Errorf("node %s: the drop-in's %s: %w (install docker.io)", d.n.Name, unit[0], err)
		}
	}
	argv := []string{bin}
	for i := 1; i < len(unit); i++ {
		a := unit[i]
		switch {
		case a == "-H" || a == "--host" || a == "--containerd":
			i++ // and its value
		case strings.HasPrefix(a, "-H=") || strings.HasPrefix(a, "--host=") || strings.HasPrefix(a, "--containerd="):
		default:
			argv = append(argv, a)
		}
	}
	return append(argv,
		"-H", "unix://"+d.Sock,
		"--data-root", filepath.Join(d.Dir, "data"),
		"--exec-root", filepath.Join(d.Dir, "exec"),
		"--pidfile", filepath.Join(d.Dir, "docker.pid"),
		"--config-file", filepath.Join(d.Dir, "daemon.json"),
		"--cgroup-parent", d.CgroupParent,
	), nil
}

// mountScript runs in dockerd's new mount namespace before it execs dockerd: sh -c mountScript sh DIR
// DOCKERD-ARGV... The tmpfs mounts hide the host's /run, /opt and /etc/docker; DIR (the daemon's folder)
// is bound back from a descriptor opened before if a tmpfs hid it (the demo's folder is in /run). mount -n
// keeps util-linux from writing /run/mount/utab on the host's /run before the tmpfs hides it; -c keeps it
// from resolving /proc/self/fd/3 to a path, which would name the hidden folder's stand-in.
const mountScript = `set -e
dir=$1; shift
exec 3<"$dir"
mount -n -t tmpfs -o mode=755 weft-run /run
mount -n -t tmpfs -o mode=755 weft-opt /opt
mount -n -t tmpfs -o mode=755 weft-etc-docker /etc/docker
if [ ! -d "$dir" ]; then
	mkdir -p "$dir"
	mount -n -c --bind /proc/self/fd/3 "$dir"
fi
exec 3<&-
exec "$@"`

// Start starts dockerd (Command) in the node's network namespace and in new private mount and PID
// namespaces, and waits until its API answers. It is an error if it is running.
func (d *Dockerd) Start(ctx context.Context) error {
	argv, err := d.Command()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.Dir, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
		return fmt.Errorf("node %s: %w", d.n.Name, err)
	}
	wrapped := append([]string{"nsenter", "--net=/run/netns/" + d.n.NS.Name, "--",
		"unshare", "--mount", "--propagation", "private", "--mount-proc", "--pid", "--kill-child=SIGKILL", "--",
		"sh", "-c", mountScript, "sh", d.Dir}, argv...)
	c := d.n.c
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("cluster is closed")
	}
	d.mu.Lock()
	if d.proc != nil && d.proc.running() {
		d.mu.Unlock()
		c.mu.Unlock()
		return fmt.Errorf("node %s: dockerd is already running (pid %d)", d.n.Name, d.proc.pid())
	}
	p, err := startProc("dockerd "+d.n.Name, wrapped, d.LogFile, c.opts.Detach)
	if err == nil {
		d.proc, d.argv, d.inner = p, argv, ProcState{}
	}
	d.mu.Unlock()
	if err == nil {
		c.saveStateLocked()
	}
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("node %s: %w", d.n.Name, err)
	}
	c.log.Info("started dockerd", "node", d.n.Name, "pid", p.pid())
	return d.waitAPI(ctx, p)
}

// waitAPI waits until dockerd answers GET /_ping, then records dockerd's PID (unshare's child).
func (d *Dockerd) waitAPI(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, d.n.c.opts.Timeout)
	defer cancel()
	for {
		if err := d.ping(ctx); err == nil {
			pid, err := childOf(p.pid())
			if err != nil {
				return fmt.Errorf("node %s: dockerd: %w", d.n.Name, err)
			}
			start, err := procStartTime(pid)
			if err != nil {
				return fmt.Errorf("node %s: dockerd: %w", d.n.Name, err)
			}
			c := d.n.c
			c.mu.Lock()
			d.mu.Lock()
			d.inner = ProcState{Name: "dockerd " + d.n.Name + " (pid namespace init)", PID: pid, Start: start}
			d.mu.Unlock()
			c.saveStateLocked()
			c.mu.Unlock()
			return nil
		}
		if !p.running() {
			return fmt.Errorf("node %s: dockerd exited: %s\n%s", d.n.Name, exitText(p.err), tail(d.LogFile, 30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: dockerd API at %s not up: %w\n%s", d.n.Name, d.Sock, ctx.Err(), tail(d.LogFile, 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *Dockerd) ping(ctx context.Context) error {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", d.Sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("GET /_ping HTTP/1.0\r\n\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.0 200") && !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
		return fmt.Errorf("GET /_ping: %q", buf[:n])
	}
	return nil
}

// PID returns the PID of the dockerd last started, or 0.
func (d *Dockerd) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc == nil {
		return 0
	}
	return d.proc.pid()
}

// Running reports whether dockerd runs.
func (d *Dockerd) Running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc != nil && d.proc.running()
}

// Stop stops dockerd: SIGTERM to dockerd's PID (it stops its containers and its containerd), and once it
// has exited (or after 20 s) SIGKILL to its parent unshare, which kills dockerd and with it its PID
// namespace. The containers keep their state: a new Start restarts them (--restart=always).
func (d *Dockerd) Stop() error {
	d.mu.Lock()
	p, inner := d.proc, d.inner
	d.mu.Unlock()
	if p == nil {
		return nil
	}
	var err error
	if inner.PID > 0 && procAlive(inner.PID, inner.Start) {
		if serr := syscall.Kill(inner.PID, syscall.SIGTERM); serr != nil && !errors.Is(serr, syscall.ESRCH) {
			err = fmt.Errorf("signal dockerd (pid %d): %w", inner.PID, serr)
		}
		deadline := time.Now().Add(20 * time.Second)
		for p.running() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if p.running() {
			err = errors.Join(err, fmt.Errorf("dockerd (pid %d) did not exit within 20s of SIGTERM; killed", inner.PID))
		}
	}
	p.stop(syscall.SIGKILL, 0)
	c := d.n.c
	c.mu.Lock()
	c.saveStateLocked()
	c.mu.Unlock()
	c.log.Info("stopped dockerd", "node", d.n.Name)
	if err != nil {
		return fmt.Errorf("node %s: %w", d.n.Name, err)
	}
	return nil
}

// Kill SIGKILLs dockerd's parent, unshare, as the kernel does when the harness dies (Pdeathsig): dockerd
// is killed with it, and with dockerd everything in its PID namespace. It waits for unshare only.
func (d *Dockerd) Kill() error {
	d.mu.Lock()
	p := d.proc
	d.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop(syscall.SIGKILL, 0)
}

// close stops dockerd and removes its containers' cgroups.
func (d *Dockerd) close() error {
	return errors.Join(d.Stop(), RemoveCgroup(d.CgroupParent))
}

// childOf returns the one child process of ppid.
func childOf(ppid int) (int, error) {
	var kids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		if pp, err := procParent(pid); err == nil && pp == ppid {
			kids = append(kids, pid)
		}
	}
	if len(kids) != 1 {
		return 0, fmt.Errorf("pid %d has children %v, want exactly one", ppid, kids)
	}
	return kids[0], nil
}

// RemoveCgroup removes the cgroup named parent (and the empty cgroups below it) from every mounted
// hierarchy under /sys/fs/cgroup (v1 controllers and v2). What is already gone is not an error.
func RemoveCgroup(parent string) error {
	if parent == "" || strings.Contains(parent, "..") {
		return fmt.Errorf("remove cgroup %q: not a plain name", parent)
	}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent)
	roots = append(roots, "/sys/fs/cgroup/"+parent)
	// A cgroup whose last processes are still being killed (a PID namespace going down) is busy a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var errs []error
		for _, root := range roots {
			var dirs []string
			filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
				if err == nil && e.IsDir() {
					dirs = append(dirs, path)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- { // children first
				if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
				}
			}
		}
		if len(errs) == 0 || time.Now().After(deadline) {
			return errors.Join(errs...)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Docker runs the docker client against this daemon and returns its standard output; an error carries
// its standard error.
func (d *Dockerd) Docker(ctx context.Context, args ...string) (string, error) {
	return d.dockerIn(ctx, nil, args...)
}

func (d *Dockerd) dockerIn(ctx context.Context, stdin *bytes.Reader, args ...string) (string, error) {
	bin := d.n.c.opts.Docker.Docker
	if bin == "" {
		bin = "docker"
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"-H", "unix://" + d.Sock}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(d.Dir, "cli"))
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := d.n.c.runCmd(cmd); err != nil {
		return out.String(), fmt.Errorf("node %s: docker %s: %w: %s", d.n.Name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Exec runs argv in the node's container (docker exec) and returns its standard output.
func (d *Dockerd) Exec(ctx context.Context, argv ...string) (string, error) {
	return d.Docker(ctx, append([]string{"exec", Container}, argv...)...)
}

// ContainerIP returns the container's address on the default bridge, as Docker reports it.
func (d *Dockerd) ContainerIP(ctx context.Context) (netip.Addr, error) {
	out, err := d.Docker(ctx, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", Container)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(strings.TrimSpace(out))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("node %s: container address %q: %w", d.n.Name, strings.TrimSpace(out), err)
	}
	return a, nil
}

// WaitContainer waits until the container runs and has an address (after a dockerd restart, say).
func (d *Dockerd) WaitContainer(ctx context.Context) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, d.n.c.opts.Timeout)
	defer cancel()
	for {
		out, err := d.Docker(ctx, "inspect", "-f", "{{.State.Running}} {{.NetworkSettings.IPAddress}}", Container)
		if running, ip, _ := strings.Cut(strings.TrimSpace(out), " "); err == nil && running == "true" {
			if a, err := netip.ParseAddr(ip); err == nil {
				return a, nil
			}
		}
		select {
		case <-ctx.Done():
			return netip.Addr{}, fmt.Errorf("node %s: container %s not running: %w (last: %q %v)", d.n.Name, Container, ctx.Err(), out, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Ping runs busybox ping in the container: `ping -A -c count -W 1 to` (-A: the next echo as soon as a
// reply comes).
func (d *Dockerd) Ping(ctx context.Context, to netip.Addr, count int) (PingResult, error) {
	out, err := d.Exec(ctx, "ping", "-A", "-c", strconv.Itoa(count), "-W", "1", to.String())
	r, perr := ParsePing(out)
	if err != nil {
		return r, err
	}
	return r, perr
}

// WaitPing pings to from the container, one probe at a time, until a reply comes or ctx ends.
func (d *Dockerd) WaitPing(ctx context.Context, to netip.Addr) error {
	for {
		r, err := d.Ping(ctx, to, 1)
		if err == nil && r.Received == 1 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s container → %s: no reply: %w (last: %v)", d.n.Name, to, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Fetch fetches http://to/blob (BlobSize bytes, served by to's container) from the container and checks
// its MD5: a TCP transfer across the overlay, larger than any MTU. (No wget -T: Debian's static busybox
// 1.35 crashes with it; ctx bounds the call.)
func (d *Dockerd) Fetch(ctx context.Context, to netip.Addr) error {
	out, err := d.Exec(ctx, "sh", "-c", "wget -q -O - http://"+to.String()+"/blob | md5sum")
	if err != nil {
		return err
	}
	if sum, _, _ := strings.Cut(strings.TrimSpace(out), " "); sum != BlobMD5() {
		return fmt.Errorf("node %s container: http://%s/blob: md5 %q, want %s", d.n.Name, to, sum, BlobMD5())
	}
	return nil
}

// SeenAs asks the httpd at to for the client address it sees (/cgi-bin/ip, REMOTE_ADDR), from the
// container.
func (d *Dockerd) SeenAs(ctx context.Context, to netip.Addr) (netip.Addr, error) {
	out, err := d.Exec(ctx, "wget", "-q", "-O", "-", "http://"+to.String()+"/cgi-bin/ip")
	if err != nil {
		return netip.Addr{}, err
	}
	s := strings.Trim(strings.TrimSpace(out), "[]")
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("node %s container: http://%s/cgi-bin/ip: %q: %w", d.n.Name, to, out, err)
	}
	return a.Unmap(), nil
}
