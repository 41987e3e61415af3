package admin

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/pgwarden/pgwarden/internal/grants"
)

// GrantStore is what the endpoint needs from the access grants
// (*grants.Registry, or a wrapper that checks route names).
type GrantStore interface {
	List() []grants.Grant
	Add(req grants.AddRequest) (grants.AddResult, error)
	Revoke(target string, opts grants.RevokeOptions) ([]grants.Grant, error)
}

var _ GrantStore = (*grants.Registry)(nil)

// GrantRequest is the POST /grants body.
type GrantRequest struct {
	// Source is an IP address or CIDR (grants.ParseSource).
	Source string `json:"source"`
	// TTL is a Go duration, e.g. "30m" (required; capped by
	// --grant-max-ttl).
	TTL string `json:"ttl"`
	// Reason justifies the grant (required; audited).
	Reason string `json:"reason"`
	// Users and Databases limit the grant; empty means any.
	Users     []string `json:"users,omitempty"`
	Databases []string `json:"databases,omitempty"`
	// Route limits the grant to one route; empty means every route.
	Route string `json:"route,omitempty"`
}

// GrantJSON is a grant as the endpoint answers it: the grant's own JSON
// ({"id", "source", "until", "reason", "users", "databases",
// "created_by", "route", "via", "rule", ...}) and, for POST, whether an
// existing grant of the source and route was extended.
type GrantJSON = grants.Answer

// AdminCreator is the created_by of grants made here.
const AdminCreator = "admin"

// registerGrants serves the access grants (GET, POST /grants, DELETE
// /grants/{id or source}); without a GrantStore the paths are not found.
func (s *Server) registerGrants(mux *http.ServeMux) {
	if s.cfg.Grants == nil {
		return
	}
	mux.HandleFunc("GET /grants", s.listGrants)
	mux.HandleFunc("POST /grants", s.addGrant)
	// {target...} takes the rest of the path: a grant id, an address, or
	// a CIDR URL-escaped or not.
	mux.HandleFunc("DELETE /grants/{target...}", s.revokeGrant)
}

func (s *Server) listGrants(w http.ResponseWriter, _ *http.Request) {
	gs := s.cfg.Grants.List()
	if gs == nil {
		gs = []grants.Grant{} // [] rather than null when empty
	}
	writeJSON(w, http.StatusOK, gs)
}

func (s *Server) addGrant(w http.ResponseWriter, r *http.Request) {
	var req GrantRequest
	if !readBody(w, r, &req) {
		return
	}
	add, err := req.toAdd()
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := s.cfg.Grants.Add(add)
	if err != nil {
		s.writeGrantError(w, err)
		return
	}
	w.Header().Set("Location", "/grants/"+url.PathEscape(res.Grant.ID))
	writeJSON(w, http.StatusCreated, GrantJSON{Grant: res.Grant, Extended: res.Extended})
}

// toAdd checks the body and turns it into the registry's request.
func (req GrantRequest) toAdd() (grants.AddRequest, error) {
	var errs []error
	src, err := grants.ParseSource(req.Source)
	if req.Source == "" {
		errs = append(errs, errors.New("source is required: an IP address or CIDR"))
	} else if err != nil {
		errs = append(errs, err)
	}
	var ttl time.Duration
	if req.TTL == "" {
		errs = append(errs, errors.New("ttl is required: how long the grant lasts, such as 30m"))
	} else if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl < grants.MinTTL {
		errs = append(errs, fmt.Errorf("ttl %q: want a duration of at least %s, such as 30m", req.TTL, grants.MinTTL))
	}
	if err := errors.Join(errs...); err != nil {
		return grants.AddRequest{}, err
	}
	return grants.AddRequest{
		Source: src, Route: req.Route, Users: req.Users, Databases: req.Databases, TTL: ttl,
		Reason: req.Reason, CreatedBy: AdminCreator, Via: grants.ViaAdmin, Rule: "admin grant",
	}, nil
}

func (s *Server) revokeGrant(w http.ResponseWriter, r *http.Request) {
	keep := false
	if v := r.URL.Query().Get("keep_sessions"); v != "" {
		var err error
		if keep, err = strconv.ParseBool(v); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("keep_sessions %q: want true or false", v))
			return
		}
	}
	if _, err := s.cfg.Grants.Revoke(r.PathValue("target"), grants.RevokeOptions{KeepSessions: keep, By: AdminCreator}); err != nil {
		s.writeGrantError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// writeGrantError maps a registry error to a status; its text goes back
// as is (a local operator; the registry's messages name the fix).
func (s *Server) writeGrantError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, grants.ErrBadRequest), errors.Is(err, grants.ErrBadTTL):
		status = http.StatusBadRequest
	case errors.Is(err, grants.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, grants.ErrFull), errors.Is(err, grants.ErrClosed):
		status = http.StatusServiceUnavailable
	default:
		s.log.Error("admin grant operation failed", zap.Error(err))
	}
	writeError(w, status, err.Error())
}
