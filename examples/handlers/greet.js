// The Quick Start handler: adds a greeting to the event and returns it.
function handler(event) { event.message = 'Hello, ' + event.name + '!'; return event; }
