// Package systemd holds Weft's systemd units, embedded, and reads the command lines they run: weftd.service
// (weftd, then weft-docker-opts as ExecStartPost) and the docker drop-in docker-weft.conf (dockerd with the
// options weft-docker-opts wrote). The end-to-end tests and the demo start weft-docker-opts and dockerd from
// these lines, so the units are the one source of truth for how the pieces are wired.
//
// The parsing covers what the units use, with systemd's rules: sections and Key=Value lines, comments (#
// and ;), an empty assignment resetting a list (ExecStart=), Exec prefixes (-, @, +, !, :), quoting, $VAR
// (split at whitespace into words) and ${VAR} (substituted inside a word), and EnvironmentFile syntax.
package systemd

import (
	_ "embed"
	"fmt"
	"regexp"
	"strings"
)

// WeftdService is dist/systemd/weftd.service.
//
//go:embed weftd.service
var WeftdService string

// DockerDropIn is dist/systemd/docker-weft.conf, the drop-in for docker.service.
//
//go:embed docker-weft.conf
var DockerDropIn string

// Unit is a parsed unit file: for each section, each key's values in file order.
type Unit map[string]map[string][]string

// Parse parses unit file text. Continuation lines (a trailing backslash) are joined.
func Parse(text string) (Unit, error) {
	u := Unit{}
	section := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			line = strings.TrimSpace(strings.TrimSuffix(line, `\`)) + " " + strings.TrimSpace(lines[i])
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("unit line %d: %q: want [Section]", i+1, line)
			}
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("unit line %d: %q: want Key=Value inside a section", i+1, line)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		u[section][key] = append(u[section][key], value)
	}
	return u, nil
}

// Values returns the values of key in section that are in effect: those after the last empty assignment
// (which resets a list setting such as ExecStart=).
func (u Unit) Values(section, key string) []string {
	vs := u[section][key]
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i] == "" {
			return vs[i+1:]
		}
	}
	return vs
}

// Value returns the single value of key in section in effect, or an error naming the unit key when there
// is none or more than one.
func (u Unit) Value(section, key string) (string, error) {
	vs := u.Values(section, key)
	if len(vs) != 1 {
		return "", fmt.Errorf("unit [%s] %s: %d values %q, want exactly one", section, key, len(vs), vs)
	}
	return vs[0], nil
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
var wholeVar = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)$`)

// Command turns an Exec line (ExecStart=...) into the argv systemd runs, given the unit's environment: Exec
// prefixes are dropped, words are split at whitespace outside quotes, an unquoted word that is exactly $VAR
// becomes the variable's value split at whitespace (no word if it is empty or unset), and ${VAR} is
// replaced inside a word.
func Command(line string, env map[string]string) ([]string, error) {
	line = strings.TrimLeft(strings.TrimSpace(line), "-@+!:")
	type word struct {
		s      string
		quoted bool
	}
	var words []word
	var cur strings.Builder
	inWord, quoted := false, false
	var quote byte
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quote != 0:
			if ch == quote {
				quote = 0
			} else if ch == '\\' && quote == '"' && i+1 < len(line) {
				i++
				cur.WriteByte(line[i])
			} else {
				cur.WriteByte(ch)
			}
		case ch == '"' || ch == '\'':
			quote, inWord, quoted = ch, true, true
		case ch == ' ' || ch == '\t':
			if inWord {
				words = append(words, word{cur.String(), quoted})
				cur.Reset()
				inWord, quoted = false, false
			}
		case ch == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
			inWord = true
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("exec line %q: unterminated quote", line)
	}
	if inWord {
		words = append(words, word{cur.String(), quoted})
	}
	var argv []string
	for _, w := range words {
		if m := wholeVar.FindStringSubmatch(w.s); m != nil && !w.quoted {
			argv = append(argv, strings.Fields(env[m[1]])...)
			continue
		}
		argv = append(argv, varRef.ReplaceAllStringFunc(w.s, func(ref string) string {
			return env[varRef.FindStringSubmatch(ref)[1]]
		}))
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("exec line %q: no command", line)
	}
	return argv, nil
}

// ParseEnvFile parses an EnvironmentFile= file: KEY=VALUE lines, # and ; comments, a value optionally in
// double quotes (with backslash escapes) or single quotes, which are removed.
func ParseEnvFile(text string) (map[string]string, error) {
	env := map[string]string{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !ok || key == "" {
			return nil, fmt.Errorf("env file line %d: %q: want KEY=VALUE", i+1, line)
		}
		switch {
		case len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"':
			var b strings.Builder
			inner := value[1 : len(value)-1]
			for j := 0; j < len(inner); j++ {
				if inner[j] == '\\' && j+1 < len(inner) {
					j++
				}
				b.WriteByte(inner[j])
			}
			value = b.String()
		case len(value) >= 2 && value[0] == '\'' && value[len(value)-1] == '\'':
			value = value[1 : len(value)-1]
		}
		env[key] = value
	}
	return env, nil
}

// DockerOptsCommand returns the weft-docker-opts command line of weftd.service (its ExecStartPost) and the
// docker options file it writes (the value of its -d flag).
func DockerOptsCommand() (argv []string, optsFile string, err error) {
	u, err := Parse(WeftdService)
	if err != nil {
		return nil, "", fmt.Errorf("weftd.service: %w", err)
	}
	line, err := u.Value("Service", "ExecStartPost")
	if err != nil {
		return nil, "", fmt.Errorf("weftd.service: %w", err)
	}
	if argv, err = Command(line, nil); err != nil {
		return nil, "", fmt.Errorf("weftd.service: %w", err)
	}
	for i, a := range argv {
		if a == "-d" && i+1 < len(argv) {
			optsFile = argv[i+1]
		}
	}
	if optsFile == "" {
		return nil, "", fmt.Errorf("weftd.service: ExecStartPost %q: no -d FILE", line)
	}
	return argv, optsFile, nil
}

// DockerdCommand returns the dockerd command line of the docker drop-in (its ExecStart), with the variables
// expanded from optsText, the content of the drop-in's EnvironmentFile (what weft-docker-opts wrote). It
// also returns that EnvironmentFile's path, which must be the file weftd.service's ExecStartPost writes.
func DockerdCommand(optsText string) (argv []string, envFile string, err error) {
	u, err := Parse(DockerDropIn)
	if err != nil {
		return nil, "", fmt.Errorf("docker drop-in: %w", err)
	}
	if envFile, err = u.Value("Service", "EnvironmentFile"); err != nil {
		return nil, "", fmt.Errorf("docker drop-in: %w", err)
	}
	envFile = strings.TrimPrefix(envFile, "-")
	line, err := u.Value("Service", "ExecStart")
	if err != nil {
		return nil, "", fmt.Errorf("docker drop-in: %w", err)
	}
	env, err := ParseEnvFile(optsText)
	if err != nil {
		return nil, "", fmt.Errorf("docker options file %s: %w", envFile, err)
	}
	if argv, err = Command(line, env); err != nil {
		return nil, "", fmt.Errorf("docker drop-in: %w", err)
	}
	return argv, envFile, nil
}
