// Command modproxy writes a GOPROXY directory (file:// layout) holding
// modules of a source tree at one version, zipped as the module proxy zips a
// tag (golang.org/x/mod/zip: nested modules excluded, paths checked). Give it
// a tree exported from git (git archive), so only committed files count.
// CI uses it to build a consumer module that requires the modules by version,
// without a replace directive.
//
//	go run . -repo ROOT -out DIR -version v0.2.0 MODPATH=SUBDIR...
//
// SUBDIR is the module's directory relative to ROOT ("." for the root module).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/zip"
)

func main() {
	out := flag.String("out", "", "proxy directory to write")
	version := flag.String("version", "", "version of every module, e.g. v0.2.0")
	stamp := flag.String("time", "", "the version's time (RFC 3339); default now")
	repo := flag.String("repo", ".", "root of the source tree")
	flag.Parse()
	if err := run(*repo, *out, *version, *stamp, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "modproxy:", err)
		os.Exit(1)
	}
}

func run(repo, out, version, stamp string, mods []string) error {
	if out == "" || version == "" || len(mods) == 0 {
		return errors.New("usage: modproxy -repo ROOT -out DIR -version vX.Y.Z MODPATH=SUBDIR")
	}
	t := time.Now().UTC()
	if stamp != "" {
		var err error
		if t, err = time.Parse(time.RFC3339, stamp); err != nil {
			return err
		}
	}
	for _, arg := range mods {
		path, subdir, ok := strings.Cut(arg, "=")
		if !ok {
			return fmt.Errorf("%q: want MODPATH=SUBDIR", arg)
		}
		if err := write(filepath.Join(repo, subdir), out, module.Version{Path: path, Version: version}, t); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}

func write(dir, out string, mv module.Version, t time.Time) error {
	if err := module.Check(mv.Path, mv.Version); err != nil {
		return err
	}
	esc, err := module.EscapePath(mv.Path)
	if err != nil {
		return err
	}
	vdir := filepath.Join(out, esc, "@v")
	if err := os.MkdirAll(vdir, 0o750); err != nil {
		return err
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod")) //nolint:gosec // paths come from CI's command line
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(vdir, mv.Version+".mod"), gomod, 0o600); err != nil { //nolint:gosec // idem
		return err
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{mv.Version, t})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(vdir, mv.Version+".info"), info, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(vdir, "list"), []byte(mv.Version+"\n"), 0o600); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(vdir, mv.Version+".zip")) //nolint:gosec // idem
	if err != nil {
		return err
	}
	if err := zip.CreateFromDir(f, mv, dir); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
