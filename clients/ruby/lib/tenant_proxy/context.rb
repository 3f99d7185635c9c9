# frozen_string_literal: true

module TenantProxy
  # What the running code is allowed to reach: a verified tenant descriptor, the explicit global
  # scope, or (no frame at all) nothing tenant-specific. A stack, so blocks nest and unwind.
  #
  # The stack lives where Active Record keeps its connected_to stack (Rails 7.0+: the isolated
  # execution state, a thread or a fiber; Rails 6.1 and plain Ruby: a thread variable), so the
  # tenant this module reports and the database Active Record uses can never disagree.
  #
  # Each thread (or fiber) has a stack of its own: Rails copies the execution state into threads it
  # starts (ActionController::Live), and a copy would share this one's frames, so a stack found
  # there that belongs to another thread is replaced by an empty one. Such a thread starts with no
  # tenant and opens its own block.
  module Context
    Frame = Struct.new(:descriptor, :global, :lease)
    Stack = Struct.new(:owner, :frames)
    KEY = :tenant_proxy_context

    module_function

    def stack
      store = state
      owner = current_owner
      found = store[KEY]
      return found.frames if found&.owner.equal?(owner)

      store[KEY] = Stack.new(owner, [])
      store[KEY].frames
    end

    def current_owner
      fibers = defined?(::ActiveSupport::IsolatedExecutionState) && ::ActiveSupport::IsolatedExecutionState.isolation_level == :fiber
      fibers ? Fiber.current : Thread.current
    end

    def current
      stack.last
    end

    def with(frame)
      list = stack
      list.push(frame)
      begin
        yield
      ensure
        list.pop
      end
    end

    # A thread-or-fiber store answering [] and []=.
    def state
      if defined?(::ActiveSupport::IsolatedExecutionState)
        ::ActiveSupport::IsolatedExecutionState
      else
        ThreadVariables
      end
    end

    # Thread variables (not fiber-locals), like Active Record 6.1's connected_to stack.
    module ThreadVariables
      def self.[](key)
        Thread.current.thread_variable_get(key)
      end

      def self.[]=(key, value)
        Thread.current.thread_variable_set(key, value)
      end
    end
  end
end
