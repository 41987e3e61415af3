package certs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// fileContent is one file writeFiles creates.
type fileContent struct {
	path string
	data []byte
	mode os.FileMode
}

// refuseExisting fails, naming the first one, if any path exists (a
// dangling symlink counts: writing through it would land elsewhere).
func refuseExisting(paths ...string) error {
	for _, p := range paths {
		_, err := os.Lstat(p)
		switch {
		case err == nil:
			return errorf("%s: %w; nothing was written (pass %s to replace it)", p, ErrExists, FieldForce)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("checking %s: %w", p, err)
		}
	}
	return nil
}

// writeFiles writes a set of files all-or-nothing as far as the file system
// allows. Every file is first written and synced to a temporary file in the
// same directory (created with O_EXCL and mode 0600, so a key is never
// briefly readable). Then, without force, each is hard-linked into place,
// which like O_EXCL fails if the name appeared meanwhile, and on failure the
// ones already placed are removed again; with force, each is renamed over
// the old file, so a running gateway's watcher never reads a half-written
// key.
func writeFiles(force bool, files []fileContent) error {
	temps := make([]string, len(files))
	defer func() {
		for _, t := range temps {
			if t != "" {
				_ = os.Remove(t)
			}
		}
	}()
	for i, f := range files {
		tmp, err := writeTemp(f)
		if err != nil {
			return err
		}
		temps[i] = tmp
	}
	var placed []string
	for i, f := range files {
		var err error
		if force {
			err = os.Rename(temps[i], f.path)
		} else if err = os.Link(temps[i], f.path); err != nil && !errors.Is(err, fs.ErrExist) {
			// Some file systems (FUSE, SMB) have no hard links: fall back
			// to writing the name itself with O_EXCL.
			err = writeExclusive(f)
		}
		if err != nil {
			for _, p := range placed {
				_ = os.Remove(p)
			}
			if errors.Is(err, fs.ErrExist) {
				return errorf("%s: %w; nothing was written (pass %s to replace it)", f.path, ErrExists, FieldForce)
			}
			return fmt.Errorf("writing %s: %w", f.path, err)
		}
		if force {
			temps[i] = "" // renamed away; nothing to clean up
		}
		placed = append(placed, f.path)
	}
	return nil
}

func writeTemp(f fileContent) (string, error) {
	// os.CreateTemp opens with O_CREATE|O_EXCL and mode 0600.
	tmp, err := os.CreateTemp(filepath.Dir(f.path), "."+filepath.Base(f.path)+".tmp*")
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", f.path, err)
	}
	name := tmp.Name()
	fail := func(err error) (string, error) {
		_ = tmp.Close()
		_ = os.Remove(name)
		return "", fmt.Errorf("writing %s: %w", f.path, err)
	}
	if _, err := tmp.Write(f.data); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(f.mode); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		_ = os.Remove(name)
		return "", fmt.Errorf("writing %s: %w", f.path, err)
	}
	return name, nil
}

// writeExclusive creates f.path with O_EXCL and writes it, removing it again
// if the write fails.
func writeExclusive(f fileContent) error {
	out, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
	if err != nil {
		return err
	}
	if _, err := out.Write(f.data); err != nil {
		_ = out.Close()
		_ = os.Remove(f.path)
		return err
	}
	if err := out.Sync(); err != nil {
		_ = out.Close()
		_ = os.Remove(f.path)
		return err
	}
	return out.Close()
}
