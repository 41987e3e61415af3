package certs

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// Watch reloads the certificate when the files change, until ctx is done.
//
// It watches the files' directories, not the files: editors, certbot and
// Kubernetes (cert-manager secrets are a symlink to a "..data" directory that
// is swapped by rename) replace files instead of writing them in place, and a
// watch on the old inode would go silent after the first replacement. Any
// event in those directories starts a quiet period (debounce, ~200ms) so that
// a cert and key written one after the other are read as a pair; Reload then
// ignores rounds where neither file's bytes changed, so unrelated files in
// the directory cost a read and nothing else.
//
// Watch returns an error only if it cannot start watching; reload failures
// are logged by Reload and the old pair keeps serving.
func (l *Loader) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching certificate files: %w", err)
	}
	defer w.Close()
	dirs := map[string]bool{
		filepath.Dir(l.certFile): true,
		filepath.Dir(l.keyFile):  true,
	}
	for dir := range dirs {
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("watching certificate directory %s: %w", dir, err)
		}
	}
	l.logger.Debug("watching certificate files", zap.String("cert_file", l.certFile), zap.String("key_file", l.keyFile))

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			l.logger.Debug("certificate directory changed", zap.String("name", ev.Name), zap.Stringer("op", ev.Op))
			// Restart the quiet period on every event.
			timer.Reset(l.debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// Overflow and similar: we may have missed an event, so reload
			// anyway after the quiet period.
			l.logger.Warn("certificate watcher error", zap.Error(err))
			timer.Reset(l.debounce)
		case <-timer.C:
			_ = l.Reload() // logged inside; the old pair keeps serving
		}
	}
}
