package fielderr

import "go.uber.org/zap/zapcore"

// Core wraps c so that every error a log line carries (zap.Error and
// zap.NamedError fields) names its fields by n: a library that logs its own
// errors (a failed certificate reload, say) then speaks the caller's words.
func Core(c zapcore.Core, n Names) zapcore.Core {
	if len(n) == 0 {
		return c
	}
	return core{Core: c, names: n}
}

type core struct {
	zapcore.Core
	names Names
}

func (c core) With(fields []zapcore.Field) zapcore.Core {
	return core{Core: c.Core.With(c.rename(fields)), names: c.names}
}

func (c core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	return c.Core.Write(e, c.rename(fields))
}

// rename returns fields with field errors rendered, copying the slice only
// when one is.
func (c core) rename(fields []zapcore.Field) []zapcore.Field {
	out := fields
	for i, f := range fields {
		if f.Type != zapcore.ErrorType {
			continue
		}
		err, ok := f.Interface.(error)
		if !ok {
			continue
		}
		if r := Rename(err, c.names); r != err {
			if &out[0] == &fields[0] {
				out = append([]zapcore.Field(nil), fields...)
			}
			out[i].Interface = r
		}
	}
	return out
}
