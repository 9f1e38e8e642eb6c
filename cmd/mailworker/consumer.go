package main

import (
	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/worker"
)

// jobsConsumer adapts queue.Jobs (JetStream) to worker.Consumer: the worker
// names no NATS type, and queue does not import the worker.
type jobsConsumer struct{ *queue.Jobs }

func (c jobsConsumer) Messages(prefetch int) (worker.Messages, error) {
	m, err := c.Jobs.Messages(prefetch)
	if err != nil {
		return nil, err
	}
	return jobsMessages{m}, nil
}

type jobsMessages struct{ *queue.Messages }

func (m jobsMessages) Next() (worker.Delivery, error) {
	d, err := m.Messages.Next()
	if queue.IsClosed(err) {
		return nil, worker.ErrClosed
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}
