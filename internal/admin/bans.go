package admin

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/acl"
)

// BanRequest is the POST /bans body.
type BanRequest struct {
	IP  string `json:"ip"`
	For string `json:"for,omitempty"` // Go duration; empty means the escalated ban time
}

// registerBans serves the jail's bans (GET, POST /bans, DELETE /bans/{ip}).
func (s *Server) registerBans(mux *http.ServeMux) {
	mux.HandleFunc("GET /bans", s.listBans)
	mux.HandleFunc("POST /bans", s.ban)
	// {ip...} takes the rest of the path, so a CIDR works URL-escaped
	// (2001:db8::%2F64) or not (2001:db8::/64).
	mux.HandleFunc("DELETE /bans/{ip...}", s.unban)
}

func (s *Server) listBans(w http.ResponseWriter, _ *http.Request) {
	bans := s.cfg.Bans.List()
	if bans == nil {
		bans = []acl.BanInfo{} // [] rather than null when empty
	}
	writeJSON(w, http.StatusOK, bans)
}

func (s *Server) ban(w http.ResponseWriter, r *http.Request) {
	var req BanRequest
	if !readBody(w, r, &req) {
		return
	}
	if err := CheckSource(req.IP); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var d time.Duration
	if req.For != "" {
		var err error
		if d, err = time.ParseDuration(req.For); err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("for %q: expected a positive duration such as 30m or 24h; omit it for the escalated ban time", req.For))
			return
		}
	}
	info, err := s.cfg.Bans.Ban(req.IP, d)
	if err != nil {
		s.writeBanError(w, err)
		return
	}
	w.Header().Set("Location", "/bans/"+url.PathEscape(info.IP))
	writeJSON(w, http.StatusCreated, info)
}

func (s *Server) unban(w http.ResponseWriter, r *http.Request) {
	ip := r.PathValue("ip")
	if err := CheckSource(ip); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.cfg.Bans.Unban(ip); err != nil {
		s.writeBanError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// writeBanError maps a jail error to a status. The text goes back as is:
// the only client is a local operator, and the jail's messages name the fix.
func (s *Server) writeBanError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, acl.ErrNotBanned):
		status = http.StatusNotFound
	case errors.Is(err, acl.ErrInvalidEntry):
		status = http.StatusBadRequest
	case errors.Is(err, acl.ErrJailClosed):
		status = http.StatusServiceUnavailable
	default:
		s.log.Error("admin ban operation failed", zap.Error(err))
	}
	writeError(w, status, err.Error())
}

// CheckSource accepts what the jail can key on: an IP address or a CIDR.
// The jail applies its stricter rules (no leading zeros, host bits) after.
func CheckSource(s string) error {
	if s == "" {
		return errors.New("ip is required: an IP address or CIDR prefix")
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if _, err := netip.ParsePrefix(s); err == nil {
		return nil
	}
	return fmt.Errorf("%q is not an IP address or CIDR prefix", s)
}
