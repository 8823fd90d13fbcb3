package e2e

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The image has no Docker engine to be built with here, so these tests do
// what its Dockerfile does, read from the Dockerfile itself: the build
// context that .dockerignore leaves, the build stage's `go build` line with
// its environment and flags, and the final stage's user, entrypoint,
// command and health check, run against a config mounted where the image
// expects it.

// dockerImageUID is the distroless nonroot user the final stage runs as.
const dockerImageUID = 65532

// dockerInstruction is one Dockerfile instruction, continuation lines
// joined.
type dockerInstruction struct {
	line    int    // where it starts, for messages
	keyword string // upper case: FROM, RUN, COPY...
	args    string // the rest, as written
}

// dockerStage is one FROM section.
type dockerStage struct {
	base, name   string
	instructions []dockerInstruction
}

// find returns the stage's instructions with keyword.
func (s dockerStage) find(keyword string) []dockerInstruction {
	var out []dockerInstruction
	for _, in := range s.instructions {
		if in.keyword == keyword {
			out = append(out, in)
		}
	}
	return out
}

// parseDockerfile splits a Dockerfile into stages. It knows what this
// repository's Dockerfile uses: comments, backslash continuations, and
// `FROM image [AS name]`.
func parseDockerfile(text string) ([]dockerStage, error) {
	var stages []dockerStage
	var pending strings.Builder
	start := 0
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if pending.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if pending.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(line, "\\") {
			pending.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		pending.WriteString(line)
		full := pending.String()
		pending.Reset()
		keyword, args, _ := strings.Cut(full, " ")
		in := dockerInstruction{line: start, keyword: strings.ToUpper(keyword), args: strings.TrimSpace(args)}
		if in.keyword == "FROM" {
			fields := strings.Fields(in.args)
			stage := dockerStage{base: fields[0]}
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				stage.name = fields[2]
			}
			stages = append(stages, stage)
			continue
		}
		if len(stages) == 0 {
			if in.keyword == "ARG" {
				continue // global build arguments
			}
			return nil, fmt.Errorf("line %d: %s before the first FROM", in.line, in.keyword)
		}
		stages[len(stages)-1].instructions = append(stages[len(stages)-1].instructions, in)
	}
	if pending.Len() > 0 {
		return nil, fmt.Errorf("the Dockerfile ends in a line continuation")
	}
	return stages, nil
}

// execForm decodes an instruction written in exec (JSON array) form; the
// image has no shell, so every command it runs must be written this way.
func execForm(t *testing.T, in dockerInstruction) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(in.args), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("Dockerfile:%d: %s %s is not in exec form [\"...\"]: the distroless image has no shell", in.line, in.keyword, in.args)
	}
	return argv
}

// shellWords splits a RUN command the way /bin/sh would for the simple
// words this Dockerfile uses: whitespace separates, double and single
// quotes group, and $NAME / ${NAME} expand from vars (not inside single
// quotes). Anything fancier is refused rather than guessed at.
func shellWords(s string, vars map[string]string) ([]string, error) {
	var words []string
	var word strings.Builder
	inWord := false
	quote := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '\'' && c != '\'':
			word.WriteByte(c)
		case c == '\'' || c == '"':
			inWord = true
			switch quote {
			case 0:
				quote = c
			case c:
				quote = 0
			default:
				word.WriteByte(c)
			}
		case c == '$':
			name, rest := "", s[i+1:]
			if strings.HasPrefix(rest, "{") {
				end := strings.IndexByte(rest, '}')
				if end < 0 {
					return nil, fmt.Errorf("unterminated ${ in %q", s)
				}
				name, i = rest[1:end], i+1+end
			} else {
				n := len(rest) - len(strings.TrimLeft(rest, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"))
				name, i = rest[:n], i+n
			}
			value, ok := vars[name]
			if !ok {
				return nil, fmt.Errorf("$%s is not a build argument", name)
			}
			word.WriteString(value)
			inWord = true
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		case quote == 0 && strings.IndexByte("|&;<>()`\\*?", c) >= 0:
			return nil, fmt.Errorf("shell syntax %q in %q is beyond what this test reads", c, s)
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, word.String())
	}
	return words, nil
}

// dockerBuild is what the Dockerfile's build stage does to make the binary.
type dockerBuild struct {
	stage  dockerStage
	env    []string // NAME=value words before `go build`
	args   []string // go build's arguments, -o included
	output string   // the -o path inside the build stage
}

var envAssignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// readDockerBuild finds the build stage's `go build` line and expands it
// with version as the VERSION build argument.
func readDockerBuild(t *testing.T, stages []dockerStage, version string) dockerBuild {
	t.Helper()
	for _, stage := range stages {
		vars := map[string]string{}
		copiedContext := false
		for _, in := range stage.instructions {
			switch in.keyword {
			case "COPY":
				copiedContext = copiedContext || in.args == ". ." || in.args == ". ./"
			case "ARG":
				name, def, _ := strings.Cut(in.args, "=")
				vars[name] = def
				if name == "VERSION" {
					vars[name] = version
				}
			case "ENV":
				t.Fatalf("Dockerfile:%d: ENV in the build stage; put build settings on the go build line, where this test reads them", in.line)
			case "RUN":
				if !strings.Contains(in.args, "go build") {
					continue
				}
				words, err := shellWords(in.args, vars)
				if err != nil {
					t.Fatalf("Dockerfile:%d: %v", in.line, err)
				}
				if !copiedContext {
					t.Fatalf("Dockerfile:%d: go build runs before COPY . . brings the source in", in.line)
				}
				b := dockerBuild{stage: stage}
				for len(words) > 0 && envAssignment.MatchString(words[0]) {
					b.env, words = append(b.env, words[0]), words[1:]
				}
				if len(words) < 2 || words[0] != "go" || words[1] != "build" {
					t.Fatalf("Dockerfile:%d: want [NAME=value...] go build ..., got %q", in.line, in.args)
				}
				b.args = words[2:]
				for i, a := range b.args {
					if a == "-o" && i+1 < len(b.args) {
						b.output = b.args[i+1]
					}
				}
				if b.output == "" {
					t.Fatalf("Dockerfile:%d: the go build line has no -o PATH", in.line)
				}
				if _, ok := vars["VERSION"]; !ok {
					t.Fatalf("Dockerfile: the build stage declares no ARG VERSION")
				}
				return b
			}
		}
	}
	t.Fatal("Dockerfile: no RUN ... go build line in any stage")
	return dockerBuild{}
}

// dockerignore is a .dockerignore file: patterns relative to the context
// root, matched as Docker does (a match on a directory covers everything
// under it, `**` spans directories, `!` re-includes, the last match wins).
type dockerignore []struct {
	re      *regexp.Regexp
	exclude bool
}

func parseDockerignore(t *testing.T, text string) dockerignore {
	t.Helper()
	var d dockerignore
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		exclude := true
		if strings.HasPrefix(line, "!") {
			exclude, line = false, strings.TrimSpace(line[1:])
		}
		pattern := strings.TrimPrefix(path.Clean(line), "/")
		if strings.ContainsAny(pattern, "[\\") {
			t.Fatalf(".dockerignore pattern %q: character classes and escapes are beyond what this test reads", line)
		}
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(pattern); i++ {
			switch {
			case strings.HasPrefix(pattern[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(pattern[i:], "**"):
				re.WriteString(".*")
				i++
			case pattern[i] == '*':
				re.WriteString("[^/]*")
			case pattern[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(pattern[i : i+1]))
			}
		}
		re.WriteString("$")
		d = append(d, struct {
			re      *regexp.Regexp
			exclude bool
		}{regexp.MustCompile(re.String()), exclude})
	}
	return d
}

// excluded reports whether the slash-separated relative path stays out of
// the build context.
func (d dockerignore) excluded(rel string) bool {
	out := false
	for _, p := range d {
		for dir := rel; dir != "." && dir != "/"; dir = path.Dir(dir) {
			if p.re.MatchString(dir) {
				out = p.exclude
				break
			}
		}
	}
	return out
}

// buildContext copies the repository into dir minus what .dockerignore
// excludes, as `docker build .` sends it.
func buildContext(t *testing.T, repo, dir string, ignore dockerignore) {
	t.Helper()
	err := filepath.WalkDir(repo, func(p string, entry fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while we walked: someone is editing the tree
		}
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repo, p)
		if err != nil || rel == "." {
			return err
		}
		slashed := filepath.ToSlash(rel)
		if ignore.excluded(slashed) {
			if entry.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dir, rel)
		switch {
		case entry.IsDir():
			return os.MkdirAll(target, 0o755)
		case entry.Type().IsRegular():
			if err := copyFile(p, target); !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil // removed while we walked: someone is editing the tree
		default:
			return nil // sockets, symlinks: nothing the build needs
		}
	})
	if err != nil {
		t.Fatalf("copying the build context: %v", err)
	}
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil {
		return err
	}
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, info.Mode().Perm()|0o444)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// repoRoot is the directory of go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// assertStatic fails unless the ELF binary at path needs no dynamic
// loader and no shared library: distroless/static has neither.
func assertStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("reading %s as ELF: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: it is dynamically linked", path, p.Type)
		}
	}
	if f.Section(".interp") != nil {
		t.Errorf("%s has an .interp section: it needs a dynamic loader", path)
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", path, libs)
	}
}

// imageDir is a directory the image's non-root user can read, standing in
// for the image's file system and its mounted config.
func imageDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "egressgw-image-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// asImageUser runs cmd as the image's user when the test can switch users
// (it runs as root), so a file only root could read fails here as it
// would in the container.
// dockerStateVolume is where the image keeps access requests and grants.
const dockerStateVolume = "/var/lib/egressgw"

func asImageUser(cmd *exec.Cmd) {
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: dockerImageUID, Gid: dockerImageUID}}
	}
}

func TestDockerImage(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the image is linux; its binary is built and run here only on linux")
	}
	t.Parallel()
	repo := repoRoot(t)
	dockerfile, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	ignoreText, err := os.ReadFile(filepath.Join(repo, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	stages, err := parseDockerfile(string(dockerfile))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: %d stage(s), want a build stage and a final one", len(stages))
	}
	version := fmt.Sprintf("e2e-docker-%d", time.Now().UnixNano())
	build := readDockerBuild(t, stages, version)
	final := stages[len(stages)-1]

	t.Run("build stage", func(t *testing.T) {
		if !strings.HasPrefix(build.stage.base, "golang:1.26") {
			t.Errorf("build stage FROM %s, want golang:1.26 (go.mod's Go)", build.stage.base)
		}
		if !slices.Contains(build.env, "CGO_ENABLED=0") {
			t.Errorf("go build environment %v lacks CGO_ENABLED=0: the binary would need libc, which distroless/static lacks", build.env)
		}
		if !slices.Contains(build.args, "-trimpath") {
			t.Errorf("go build %v lacks -trimpath", build.args)
		}
		if !slices.ContainsFunc(build.args, func(a string) bool { return strings.Contains(a, "-X main.version="+version) }) {
			t.Errorf("go build %v does not stamp main.version from ARG VERSION", build.args)
		}
	})

	t.Run("final stage", func(t *testing.T) {
		if !strings.HasPrefix(final.base, "gcr.io/distroless/static") || !strings.Contains(final.base, "nonroot") {
			t.Errorf("final stage FROM %s, want gcr.io/distroless/static...:nonroot", final.base)
		}
		users := final.find("USER")
		if len(users) == 0 || !strings.HasPrefix(users[len(users)-1].args, fmt.Sprint(dockerImageUID)) {
			t.Errorf("final stage USER %v, want the numeric nonroot user %d (Kubernetes' runAsNonRoot can verify only a number)", users, dockerImageUID)
		}
		var exposed []string
		for _, in := range final.find("EXPOSE") {
			exposed = append(exposed, strings.Fields(in.args)...)
		}
		for _, port := range []string{"3128", "9128"} {
			if !slices.Contains(exposed, port) {
				t.Errorf("final stage EXPOSE %v lacks %s", exposed, port)
			}
		}
	})

	// What the final stage runs: the copied binary, its entrypoint, command
	// and health check.
	var copied, copiedFrom string
	for _, in := range final.find("COPY") {
		fields := strings.Fields(in.args)
		if len(fields) == 3 && fields[0] == "--from="+build.stage.name {
			copiedFrom, copied = fields[1], fields[2]
		}
	}
	if copiedFrom != build.output {
		t.Fatalf("final stage copies %q from stage %q, but go build writes %q", copiedFrom, build.stage.name, build.output)
	}
	entrypoint := lastExecForm(t, final, "ENTRYPOINT")
	command := lastExecForm(t, final, "CMD")
	healthInstr := final.find("HEALTHCHECK")
	if len(healthInstr) == 0 {
		t.Fatal("final stage has no HEALTHCHECK")
	}
	_, healthArgs, _ := strings.Cut(healthInstr[len(healthInstr)-1].args, "CMD ")
	health := execForm(t, dockerInstruction{line: healthInstr[0].line, keyword: "HEALTHCHECK CMD", args: healthArgs})
	if len(entrypoint) != 1 || entrypoint[0] != copied {
		t.Fatalf("ENTRYPOINT %q, want [%q], the binary the final stage copies", entrypoint, copied)
	}
	if health[0] != copied || len(health) < 2 || health[1] != "healthcheck" {
		t.Fatalf("HEALTHCHECK CMD %q, want [%q, \"healthcheck\"]", health, copied)
	}
	// The state directory is a volume the image's user owns: a named
	// volume starts as a copy of it, ownership included.
	volumes := final.find("VOLUME")
	if len(volumes) == 0 || !strings.Contains(volumes[len(volumes)-1].args, `"`+dockerStateVolume+`"`) {
		t.Errorf("final stage declares no VOLUME [%q] for the state store", dockerStateVolume)
	}
	ownedState := false
	for _, in := range final.find("COPY") {
		fields := strings.Fields(in.args)
		ownedState = ownedState || (slices.Contains(fields, fmt.Sprintf("--chown=%d:%d", dockerImageUID, dockerImageUID)) && fields[len(fields)-1] == dockerStateVolume)
	}
	if !ownedState {
		t.Errorf("the final stage does not give %s to uid %d (COPY --chown): the gateway could not write its state there", dockerStateVolume, dockerImageUID)
	}
	configAt := slices.Index(command, "--config")
	if len(command) == 0 || command[0] != "serve" || configAt < 0 || configAt+1 >= len(command) {
		t.Fatalf("CMD %q, want serve --config DIR", command)
	}
	mountPoint := command[configAt+1]
	if mountPoint != "/etc/egressgw" {
		t.Errorf("CMD serves %s; the documented config mount point is /etc/egressgw", mountPoint)
	}

	ignore := parseDockerignore(t, string(ignoreText))
	t.Run("build context", func(t *testing.T) {
		for _, p := range []string{".git/config", "configs/kubernetes/ca/ca-key.pem", "ca/ca-key.pem", "egressgw", "policy.test", "e2e/testdata/node/node_modules/undici/index.js"} {
			if !ignore.excluded(p) {
				t.Errorf(".dockerignore lets %s into the build context", p)
			}
		}
		for _, p := range []string{"go.mod", "go.sum", "cmd/egressgw/main.go", "configs/embed.go", "configs/quickstart/gateway.yaml", "configs/quickstart/tenants/demo.yaml"} {
			if ignore.excluded(p) {
				t.Errorf(".dockerignore keeps %s, which the build needs, out of the build context", p)
			}
		}
	})

	// Build as the build stage does: from the context .dockerignore leaves,
	// in its WORKDIR, with its environment and flags.
	work := imageDir(t)
	contextDir := filepath.Join(work, "context")
	buildContext(t, repo, contextDir, ignore)
	if _, err := os.Stat(filepath.Join(contextDir, ".git")); err == nil {
		t.Errorf(".git is in the build context; .dockerignore must keep it out")
	}
	binary := filepath.Join(work, strings.TrimPrefix(copied, "/"))
	args := slices.Clone(build.args)
	args[slices.Index(args, "-o")+1] = binary
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	goBuild := exec.CommandContext(ctx, "go", append([]string{"build"}, args...)...)
	goBuild.Dir = contextDir // COPY . . into the WORKDIR: the context is the build's directory
	goBuild.Env = append(childEnv(), append([]string{"GOWORK=off", "GOFLAGS="}, build.env...)...)
	if out, err := goBuild.CombinedOutput(); err != nil {
		t.Fatalf("go build %s (the Dockerfile's build line, in the build context): %v\n%s", strings.Join(args, " "), err, out)
	}

	t.Run("static binary", func(t *testing.T) { assertStatic(t, binary) })

	t.Run("version is stamped", func(t *testing.T) {
		res := run(t, nil, "", binary, "version")
		if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "egressgw "+version+" ") {
			t.Errorf("version: exit %d, output %q; want \"egressgw %s (...)\"", res.exitCode, res.output(), version)
		}
	})

	t.Run("serves the mounted config and passes its health check", func(t *testing.T) {
		// The config mounted at the mount point: a copy of the quickstart.
		mounted := filepath.Join(work, strings.TrimPrefix(mountPoint, "/"))
		if err := os.CopyFS(mounted, os.DirFS(filepath.Join(repo, "configs", "quickstart"))); err != nil {
			t.Fatal(err)
		}
		if err := filepath.WalkDir(work, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				err = os.Chmod(p, 0o755) // the mount and the image's directories are readable by the image's user
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		// The state store is the image's volume, owned by its user, as the
		// Dockerfile comment tells gateway.yaml to name it.
		stateDir := filepath.Join(work, strings.TrimPrefix(dockerStateVolume, "/"))
		if err := os.MkdirAll(stateDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() == 0 {
			if err := os.Chown(stateDir, dockerImageUID, dockerImageUID); err != nil {
				t.Fatal(err)
			}
		}
		gatewayFile := filepath.Join(mounted, "gateway.yaml")
		config, err := os.ReadFile(gatewayFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(gatewayFile, append(config, fmt.Sprintf("state: { dir: %q }\n", stateDir)...), 0o644); err != nil {
			t.Fatal(err)
		}
		proxyAddr, adminAddr := freeAddr(t), freeAddr(t)
		argv := append(slices.Clone(command), "--listen", proxyAddr, "--admin-listen", adminAddr)
		argv[configAt+1] = mounted
		serve := exec.Command(binary, argv...)
		serve.Env = childEnv()
		asImageUser(serve)
		var stderr lockedBuffer
		serve.Stdout, serve.Stderr = io.Discard, &stderr
		if err := serve.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { serve.Wait(); close(exited) }()
		t.Cleanup(func() {
			serve.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("egressgw stderr:\n%s", tail(stderr.String(), 4000))
			}
		})

		healthcheck := func() commandResult {
			argv := append(slices.Clone(health[1:]), "--admin-listen", adminAddr)
			return run(t, nil, "", binary, argv...)
		}
		eventually(t, 20*time.Second, func() error {
			select {
			case <-exited:
				t.Fatalf("egressgw %s exited before becoming healthy", strings.Join(argv, " "))
			default:
			}
			if res := healthcheck(); res.exitCode != 0 {
				return fmt.Errorf("healthcheck: exit %d: %s", res.exitCode, strings.TrimSpace(res.output()))
			}
			return nil
		})
		if res := healthcheck(); res.exitCode != 0 || !strings.Contains(res.stdout, "ready") {
			t.Errorf("healthcheck against a serving gateway: exit %d, output %q; want 0 and \"ready\"", res.exitCode, res.output())
		}
		// The proxy answers on its port as the image exposes it.
		conn, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
		if err != nil {
			t.Errorf("the proxy listener does not accept connections: %v", err)
		} else {
			conn.Close()
		}

		serve.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Fatal("egressgw did not stop within 30s of SIGTERM")
		}
		if code := serve.ProcessState.ExitCode(); code != 0 {
			t.Errorf("egressgw exit code %d after SIGTERM, want 0", code)
		}
		if res := healthcheck(); res.exitCode != 1 {
			t.Errorf("healthcheck against a stopped gateway: exit %d, want 1; output %q", res.exitCode, res.output())
		}
	})
}

// lastExecForm returns the last instruction keyword of stage in exec form;
// like Docker, a later one overrides an earlier one.
func lastExecForm(t *testing.T, stage dockerStage, keyword string) []string {
	t.Helper()
	found := stage.find(keyword)
	if len(found) == 0 {
		t.Fatalf("final stage has no %s", keyword)
	}
	return execForm(t, found[len(found)-1])
}
