package certs

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// maxDebounceFactor caps how long a stream of events can postpone a reload:
// at most this many quiet periods after the first event.
const maxDebounceFactor = 10

// defaultDebounce is the quiet period after a file event before a reload.
const defaultDebounce = 200 * time.Millisecond

// Watch reloads the certificate when the files change, until ctx is done.
//
// It watches the files' directories, not the files: editors, certbot and
// Kubernetes (secret volumes are symlinks into a "..data" directory that is
// swapped by rename) replace files instead of writing them in place, and a
// watch on the old inode would go silent after the first replacement. For a
// file that is a symlink it also watches the directory of the resolved
// target, in case the target is rewritten in place.
//
// Relevant events (the files' own names, Kubernetes' "..data" names, anything
// in a resolved-target directory) start a quiet period (~200ms) so that a
// cert and key written one after the other are read as a pair; continuous
// events cannot postpone the reload by more than ten quiet periods. Reload
// then ignores rounds where neither file's bytes changed.
//
// Watch returns an error only if it cannot start watching; reload failures
// are logged by Reload and the old pair keeps serving.
func (l *Loader) Watch(ctx context.Context) error {
	return fileWatch{
		what:     "certificate",
		files:    []string{l.certFile, l.keyFile},
		logger:   l.logger,
		debounce: l.debounce,
		watching: l.watching,
		reload:   func() { _ = l.Reload() }, // logged inside; the old pair keeps serving
	}.run(ctx)
}

// fileWatch calls reload after files change, as Loader.Watch describes.
type fileWatch struct {
	what     string // for messages: "<what> file changed"
	files    []string
	logger   *zap.Logger
	debounce time.Duration
	watching func() // test hook: called once the watches are in place
	reload   func()
}

func (fw fileWatch) run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s files: %w", fw.what, err)
	}
	defer w.Close()
	for _, f := range fw.files {
		dir := filepath.Dir(f)
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("watching %s directory %s: %w", fw.what, dir, err)
		}
	}
	targets := fw.addTargetDirs(w, nil)
	fw.logger.Debug("watching "+fw.what+" files", zap.Strings("files", fw.files))
	if fw.watching != nil {
		fw.watching()
	}

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var pendingSince time.Time // zero: no reload pending
	schedule := func() {
		now := time.Now()
		if pendingSince.IsZero() {
			pendingSince = now
		} else if now.Sub(pendingSince) > maxDebounceFactor*fw.debounce {
			return // let the running timer fire
		}
		timer.Reset(fw.debounce)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if !fw.relevant(ev.Name, targets) {
				continue
			}
			fw.logger.Debug(fw.what+" file changed", zap.String("name", ev.Name), zap.Stringer("op", ev.Op))
			schedule()
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// Overflow and similar: we may have missed an event, so reload
			// anyway after the quiet period.
			fw.logger.Warn(fw.what+" watcher error", zap.Error(err))
			schedule()
		case <-timer.C:
			pendingSince = time.Time{}
			fw.reload()
			// A symlink swap may have moved the targets.
			targets = fw.addTargetDirs(w, targets)
		}
	}
}

// relevant reports whether an event on name may change the files.
func (fw fileWatch) relevant(name string, targetDirs map[string]bool) bool {
	base := filepath.Base(name)
	for _, f := range fw.files {
		if base == filepath.Base(f) {
			return true
		}
	}
	if strings.HasPrefix(base, "..") { // Kubernetes atomic writer: ..data, ..data_tmp, ..2024_...
		return true
	}
	return targetDirs[filepath.Dir(name)]
}

// addTargetDirs watches the directories the files' symlinks resolve to, if
// they differ from the given directories, and returns the set.
func (fw fileWatch) addTargetDirs(w *fsnotify.Watcher, known map[string]bool) map[string]bool {
	if known == nil {
		known = map[string]bool{}
	}
	for _, f := range fw.files {
		resolved, err := filepath.EvalSymlinks(f)
		if err != nil {
			continue
		}
		dir := filepath.Dir(resolved)
		given, _ := filepath.EvalSymlinks(filepath.Dir(f))
		if dir == given || known[dir] {
			continue
		}
		if err := w.Add(dir); err != nil {
			fw.logger.Debug("not watching "+fw.what+" target directory", zap.String("dir", dir), zap.Error(err))
			continue
		}
		known[dir] = true
	}
	return known
}
