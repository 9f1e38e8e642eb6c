// Package deploy holds no code: its test reads the PowerShell scripts of the deploy kit.
package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestPowerShellStatic is a cheap static check of deploy/entra and deploy/exchange, since no
// PowerShell runs on our machines. What it proves, and only that:
//
//   - brackets ( ) { } [ ] balance outside strings and comments, with PowerShell's quoting:
//     single-quoted strings (a doubled quote escapes one), "..." (backtick escapes, $( ) subexpressions nested inside), here-strings
//     @'/@" that open at the end of a line and close with '@/"@ at the start of one, # and <# #>
//     comments;
//   - no C#-style format specifier in a subexpression ("$($x.NotAfter:u)" does not parse; use
//     .ToString('u') or -f);
//   - no whitespace after a line-continuation backtick (the backtick then escapes the space and
//     the command ends there);
//   - every file starts with #Requires -Version 7.4, and a file that calls ShouldProcess declares
//     SupportsShouldProcess.
//
// It does not prove that a script parses, that a cmdlet or parameter exists, or that it runs:
// that needs PowerShell (Invoke-ScriptAnalyzer, or [System.Management.Automation.Language.Parser]
// ::ParseFile) on a machine that has it.
func TestPowerShellStatic(t *testing.T) {
	var files []string
	for _, pat := range []string{"entra/*.ps*1", "exchange/*.ps*1"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < 8 {
		t.Fatalf("found %d PowerShell files, want the 8 of deploy/entra and deploy/exchange: %v", len(files), files)
	}
	formatInSubexpr := regexp.MustCompile(`\$\(\$[A-Za-z_]\w*(\.\w+)+:[A-Za-z]+\)`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src := strings.ReplaceAll(string(b), "\r\n", "\n")
		for _, e := range psBrackets(src) {
			t.Errorf("%s: %s", f, e)
		}
		for i, line := range strings.Split(src, "\n") {
			if m := formatInSubexpr.FindString(line); m != "" {
				t.Errorf("%s:%d: %s: a format specifier inside $( ) does not parse; use .ToString('u') or -f", f, i+1, m)
			}
			if strings.TrimRight(line, " \t") != line && strings.HasSuffix(strings.TrimRight(line, " \t"), "`") {
				t.Errorf("%s:%d: whitespace after a line-continuation backtick", f, i+1)
			}
		}
		if !strings.HasPrefix(src, "#Requires -Version 7.4\n") {
			t.Errorf("%s: does not start with #Requires -Version 7.4", f)
		}
		if strings.Contains(src, ".ShouldProcess(") && !strings.Contains(src, "SupportsShouldProcess") {
			t.Errorf("%s: calls ShouldProcess without [CmdletBinding(SupportsShouldProcess)]", f)
		}
	}
}

// TestPowerShellStaticCatches proves the check finds what it claims to.
func TestPowerShellStaticCatches(t *testing.T) {
	for _, tc := range []struct{ name, src string }{
		{"unclosed brace", "if ($a) {\n  'x'\n"},
		{"unclosed paren in a subexpression", "\"$($a.B\"\n"},
		{"unterminated string", "'abc\n"},
		{"here-string opener not at end of line", "$s = @' x\n'@\n"},
		{"unterminated here-string", "$s = @'\nabc\n"},
		{"mismatched", "(]\n"},
	} {
		if errs := psBrackets(tc.src); len(errs) == 0 {
			t.Errorf("%s: no error for %q", tc.name, tc.src)
		}
	}
	for _, ok := range []string{
		"Write-Host \"a $($x.ToString('u')) b `\" c\" # ) comment\n",
		"$h = @'\n( { [ unbalanced inside\n'@\n",
		"<# ( #> $a = @{ k = 'it''s' }\n",
		"\"$($a | ForEach-Object { \"$($_.Name)\" })\"\n",
	} {
		if errs := psBrackets(ok); len(errs) != 0 {
			t.Errorf("false positive on %q: %v", ok, errs)
		}
	}
}

// psBrackets scans PowerShell source and reports unbalanced brackets and unterminated strings,
// comments and here-strings, with line numbers.
func psBrackets(src string) []string {
	type open struct {
		c    byte
		line int
		str  bool // a $( opened inside a double-quoted string: its ) returns to the string
	}
	var (
		errs  []string
		stack []open
		line  = 1
	)
	pairs := map[byte]byte{')': '(', '}': '{', ']': '['}
	i := 0
	// dq scans a double-quoted string body from i until its closing quote, or until a $( that
	// opens a subexpression (then it returns true and the caller continues in code).
	dq := func(start int) bool {
		for i < len(src) {
			c := src[i]
			switch {
			case c == '\n':
				line++
				i++
			case c == '`':
				if i+1 < len(src) && src[i+1] == '\n' {
					line++
				}
				i += 2
			case c == '"':
				if i+1 < len(src) && src[i+1] == '"' { // "" is an escaped quote
					i += 2
					continue
				}
				i++
				return false
			case c == '$' && i+1 < len(src) && src[i+1] == '(':
				stack = append(stack, open{'(', line, true})
				i += 2
				return true
			default:
				i++
			}
		}
		errs = append(errs, fmt.Sprintf("line %d: unterminated double-quoted string", start))
		return false
	}
	for i < len(src) {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
		case c == '`':
			if i+1 < len(src) && src[i+1] == '\n' {
				line++
			}
			i += 2
		case c == '<' && strings.HasPrefix(src[i:], "<#"):
			end := strings.Index(src[i+2:], "#>")
			if end < 0 {
				errs = append(errs, fmt.Sprintf("line %d: unterminated block comment", line))
				return errs
			}
			line += strings.Count(src[i:i+2+end], "\n")
			i += 2 + end + 2
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '@' && i+1 < len(src) && (src[i+1] == '\'' || src[i+1] == '"'):
			q := src[i+1]
			start := line
			j := i + 2
			for j < len(src) && (src[j] == ' ' || src[j] == '\t') {
				j++
			}
			if j >= len(src) || src[j] != '\n' {
				errs = append(errs, fmt.Sprintf("line %d: here-string opener @%c must end its line", line, q))
				return errs
			}
			end := strings.Index(src[j:], "\n"+string(q)+"@")
			if end < 0 {
				errs = append(errs, fmt.Sprintf("line %d: unterminated here-string", start))
				return errs
			}
			line += strings.Count(src[i:j+end+1], "\n")
			i = j + end + 3
		case c == '\'':
			start := line
			i++
			for {
				if i >= len(src) {
					errs = append(errs, fmt.Sprintf("line %d: unterminated single-quoted string", start))
					return errs
				}
				if src[i] == '\'' {
					if i+1 < len(src) && src[i+1] == '\'' {
						i += 2
						continue
					}
					i++
					break
				}
				if src[i] == '\n' {
					line++
				}
				i++
			}
		case c == '"':
			i++
			dq(line)
		case c == '(' || c == '{' || c == '[':
			stack = append(stack, open{c, line, false})
			i++
		case c == ')' || c == '}' || c == ']':
			if len(stack) == 0 || stack[len(stack)-1].c != pairs[c] {
				errs = append(errs, fmt.Sprintf("line %d: unmatched %c", line, c))
				return errs
			}
			top := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			i++
			if top.str { // back inside the double-quoted string that held the $( )
				dq(top.line)
			}
		default:
			i++
		}
	}
	for _, o := range stack {
		errs = append(errs, fmt.Sprintf("line %d: unclosed %c", o.line, o.c))
	}
	return errs
}
