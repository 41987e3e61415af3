package grantclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// maxTokenResponse bounds the token endpoint's answer: a JWT is a few KiB.
const maxTokenResponse = 64 << 10

// TokenSource yields an OIDC token (a JWT) for one grant request. It is
// asked again for each renewal: CI tokens are short-lived.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// EnvToken reads the token from an environment variable, as GitLab's
// `id_tokens:` provide it.
type EnvToken struct {
	Name   string
	Getenv func(string) string
}

// Token implements TokenSource.
func (e EnvToken) Token(context.Context) (string, error) {
	tok := strings.TrimSpace(e.Getenv(e.Name))
	if tok == "" {
		return "", fmt.Errorf("token variable %s is empty or not set", e.Name)
	}
	return tok, nil
}

// GitHubToken requests a token from GitHub Actions' OIDC provider for
// Audience.
type GitHubToken struct {
	Audience string
	Getenv   func(string) string
	// Client defaults to a client with a timeout; GitHub's endpoint is
	// verified against the system roots.
	Client *http.Client
}

// Token implements TokenSource: GET $ACTIONS_ID_TOKEN_REQUEST_URL with
// &audience=AUD, authorized by $ACTIONS_ID_TOKEN_REQUEST_TOKEN, answered
// with {"value": JWT}.
func (g GitHubToken) Token(ctx context.Context) (string, error) {
	reqURL, reqTok := g.Getenv("ACTIONS_ID_TOKEN_REQUEST_URL"), g.Getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
	if reqURL == "" || reqTok == "" {
		return "", errors.New("ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set: run in GitHub Actions with `permissions: id-token: write`")
	}
	u, err := url.Parse(reqURL)
	if err != nil {
		return "", fmt.Errorf("ACTIONS_ID_TOKEN_REQUEST_URL: %w", err)
	}
	q := u.Query()
	q.Set("audience", g.Audience)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("building the GitHub token request: %w", err)
	}
	req.Header.Set("Authorization", "bearer "+reqTok)
	req.Header.Set("Accept", "application/json")
	client := g.Client
	if client == nil {
		client = &http.Client{Timeout: requestTimeout}
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("requesting a GitHub OIDC token: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	if err != nil {
		return "", fmt.Errorf("reading the GitHub OIDC token: %w", err)
	}
	if len(body) > maxTokenResponse {
		return "", fmt.Errorf("the GitHub OIDC token response is larger than %d bytes", maxTokenResponse)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("requesting a GitHub OIDC token: %s", resp.Status)
	}
	var tr struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(body, &tr); err != nil || tr.Value == "" {
		return "", errors.New("the GitHub OIDC token response has no \"value\"")
	}
	return tr.Value, nil
}
