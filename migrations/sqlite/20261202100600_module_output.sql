-- How a module job's outputs are read (the job's `output` field, docs/task-abi.md): 'json'
-- (UTF-8 JSON text, parsed) or 'text' (any UTF-8 text, kept as a JSON string). NULL for kernel
-- jobs, and for module jobs stored before this column existed, which read JSON.
ALTER TABLE jobs ADD COLUMN module_output TEXT CHECK (module_output IN ('json', 'text'));
