package main

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
)

// newLogger writes JSON lines with Cloud Logging's field names: Cloud Run
// reads "severity" and "message" from stdout, and Fly's log search shows the
// same fields, so levels survive on both platforms.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.LevelKey:
				return slog.String("severity", cloudSeverity(a.Value.Any().(slog.Level)))
			case slog.MessageKey:
				a.Key = "message"
			}
			return a
		},
	}))
}

// cloudSeverity maps slog levels onto Cloud Logging's LogSeverity names.
func cloudSeverity(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "ERROR"
	case l >= slog.LevelWarn:
		return "WARNING"
	case l >= slog.LevelInfo:
		return "INFO"
	}
	return "DEBUG"
}

// traceKey is the field by which Cloud Logging shows an entry with the
// request log of its trace: on Cloud Run a session's lines then sit under the
// platform's line for its WebSocket request.
const traceKey = "logging.googleapis.com/trace"

// cloudTrace is the Cloud Trace name of r's trace,
// projects/PROJECT/traces/ID, from the traceparent or X-Cloud-Trace-Context
// header Cloud Run's front end sends; "" without a project or a well-formed
// header. Only a trace id of 32 hex digits goes into a log line.
func cloudTrace(r *http.Request, project string) string {
	if project == "" {
		return ""
	}
	var id string
	if tp := r.Header.Get("traceparent"); len(tp) >= 55 && tp[2] == '-' && tp[35] == '-' {
		id = tp[3:35] // version-traceid-parentid-flags
	} else if xc := r.Header.Get("X-Cloud-Trace-Context"); xc != "" {
		id, _, _ = strings.Cut(xc, "/") // TRACE_ID/SPAN_ID;o=OPTIONS
		id, _, _ = strings.Cut(id, ";")
	}
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" || strings.Trim(id, "0") == "" {
		return ""
	}
	return "projects/" + project + "/traces/" + id
}
