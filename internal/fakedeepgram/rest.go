package fakedeepgram

import (
	"net/http"
	"strings"
)

// The one REST endpoint the relay calls: GET /v1/projects, Deepgram's "List
// Projects" (openapi.yml in deepgram/deepgram-api-specs: "Retrieves basic
// information about the projects associated with the API key", with a
// required "Authorization: Token <API_KEY>"). The relay asks it once at start
// to learn whether its key is accepted, the cheapest call the spec gives
// that needs a key and changes nothing.

// projectsPath is the endpoint's path.
const projectsPath = "/v1/projects"

// isREST reports whether r is a REST call the fake answers rather than a
// WebSocket handshake.
func isREST(r *http.Request) bool {
	return r.URL.Path == projectsPath && r.Header.Get("Upgrade") == ""
}

// RESTRequests returns every REST call seen so far, oldest first (apart
// from Handshakes).
func (s *Server) RESTRequests() []Handshake {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Handshake(nil), s.rest...)
}

// projects answers GET /v1/projects. A key is taken only as "Authorization:
// Token <key>" (there is no subprotocol over REST), and only Options.APIKey
// when it is set; a temporary token is refused, as Deepgram's grant docs say
// its tokens "will not work with the Manage APIs". A refusal is 401 with
// Deepgram's legacy error body (the spec's ErrorResponseLegacyError; docs
// errors page: INVALID_AUTH, "Invalid credentials.").
func (s *Server) projects(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	opts := s.opts
	s.rest = append(s.rest, Handshake{Host: r.Host, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone()})
	s.mu.Unlock()
	id := requestID()
	w.Header().Set("dg-request-id", id)
	w.Header().Set("Content-Type", "application/json")
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	scheme, key, found := strings.Cut(r.Header.Get("Authorization"), " ")
	if !found || !strings.EqualFold(scheme, "token") || key == "" || (opts.APIKey != "" && key != opts.APIKey) {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"` + id + `"}`))
		return
	}
	_, _ = w.Write([]byte(`{"projects":[{"project_id":"` + requestID() + `","name":"fake project"}]}`))
}
