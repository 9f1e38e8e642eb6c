package contract

import _ "embed"

// JobSchema is the JSON Schema (draft 2020-12) of a Job, for non-Go producers.
//
//go:embed schema/job.schema.json
var JobSchema []byte
