// Package fielderr lets a library say which of its configuration fields an
// error is about without knowing what its caller calls that field: a flag
// (--tls-cert) on the command line, a key in a YAML file, or the Go field
// name for a program that builds the configuration itself.
//
// A library builds errors with Errorf, passing its Field values among the
// arguments; Error() names each field by its Field.Name. The caller renders
// the whole error tree, wrappers and joins included, with the names its
// users know (Render), and can do the same for the errors a library logs by
// wrapping its logger's core (Core).
package fielderr

import (
	"errors"
	"fmt"
	"strings"
)

// Field is one configuration input of a package.
type Field struct {
	// Pkg is the package that defines the field, so two packages' fields
	// of the same name stay apart.
	Pkg string
	// Name is how the package's own texts name it.
	Name string
}

// String is the field's own name.
func (f Field) String() string { return f.Name }

// Names maps fields to what a caller's users call them; a field it does not
// list keeps its own name.
type Names map[Field]string

// Of names f.
func (n Names) Of(f Field) string {
	if s, ok := n[f]; ok {
		return s
	}
	return f.Name
}

// Renderer is an error that can name its fields the caller's way. *Error
// is one; a library's own error types can be too.
type Renderer interface {
	error
	// Text is the error with every field named by n.
	Text(n Names) string
}

// Error is an error about one or more fields.
type Error struct {
	format string
	args   []any
	err    error // the text with the fields' own names, and what it wraps
}

// Errorf formats like fmt.Errorf (%w included). Field arguments are
// rendered by name, and error arguments that hold field errors are
// rendered with the same names.
func Errorf(format string, args ...any) *Error {
	return &Error{format: format, args: args, err: fmt.Errorf(format, args...)}
}

// Error is the text with every field's own name.
func (e *Error) Error() string { return e.err.Error() }

// Unwrap returns the errors e wraps (its %w arguments).
func (e *Error) Unwrap() []error {
	switch u := e.err.(type) {
	case interface{ Unwrap() error }:
		return []error{u.Unwrap()}
	case interface{ Unwrap() []error }:
		return u.Unwrap()
	}
	return nil
}

// Fields lists the fields e names, in order; the first is the one at fault.
func (e *Error) Fields() []Field {
	var out []Field
	for _, a := range e.args {
		if f, ok := a.(Field); ok {
			out = append(out, f)
		}
	}
	return out
}

// Text is e with every field named by n.
func (e *Error) Text(n Names) string {
	args := make([]any, len(e.args))
	for i, a := range e.args {
		switch v := a.(type) {
		case Field:
			args[i] = n.Of(v)
		case error:
			args[i] = rendered{text: Render(v, n), err: v}
		default:
			args[i] = a
		}
	}
	return fmt.Errorf(e.format, args...).Error()
}

// Render returns err's text with every field in it named by n. Wrappers
// (fmt.Errorf's %w, errors.Join, types with Unwrap) keep their own text:
// each field error's text is replaced inside it.
func Render(err error, n Names) string {
	if err == nil {
		return ""
	}
	text := err.Error()
	if len(n) == 0 {
		return text
	}
	for _, r := range outermost(err, nil) {
		text = strings.ReplaceAll(text, r.Error(), r.Text(n))
	}
	return text
}

// Rename returns err with the text Render gives it, wrapping err so that
// errors.Is and errors.As still see through it. It returns err itself when
// nothing in it names a field.
func Rename(err error, n Names) error {
	var r Renderer
	if err == nil || len(n) == 0 || !errors.As(err, &r) {
		return err
	}
	return rendered{text: Render(err, n), err: err}
}

// outermost collects the Renderers in err's tree that no other Renderer
// contains (those render what they contain).
func outermost(err error, into []Renderer) []Renderer {
	if r, ok := err.(Renderer); ok {
		return append(into, r)
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if inner := u.Unwrap(); inner != nil {
			into = outermost(inner, into)
		}
	case interface{ Unwrap() []error }:
		for _, inner := range u.Unwrap() {
			if inner != nil {
				into = outermost(inner, into)
			}
		}
	}
	return into
}

// rendered is an error whose text has been rendered with a caller's names.
type rendered struct {
	text string
	err  error
}

func (r rendered) Error() string { return r.text }
func (r rendered) Unwrap() error { return r.err }
