# frozen_string_literal: true

require "socket"
require "json"

# A real HTTP/1.1 server on 127.0.0.1 (port 0) whose behaviour tests switch at any time:
#   :ok       answers 200 with the body the block returns (or #body)
#   :hang     accepts, reads the request, never answers (a wedged ops port)
#   :redirect answers 302 to #location
# Every request's path and headers are recorded. #dead! closes the listener (connection refused).
class HttpStub
  Request = Struct.new(:path, :headers)

  attr_accessor :mode, :body, :status, :location, :handler
  attr_reader :requests, :port

  def initialize(mode: :ok, body: "{}", &handler)
    @mode = mode
    @body = body
    @status = 200
    @handler = handler
    @requests = []
    @lock = Mutex.new
    @held = []
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @thread = Thread.new { accept_loop }
    @thread.report_on_exception = false
  end

  def url(path = "/")
    "http://127.0.0.1:#{@port}#{path}"
  end

  def count
    @lock.synchronize { @requests.length }
  end

  def dead!
    @server.close unless @server.closed?
    @thread.join(1)
  end

  def close
    dead!
    @lock.synchronize { @held.each { |s| s.close unless s.closed? } }
  end

  private

  def accept_loop
    loop do
      client = @server.accept
      Thread.new(client) { |c| serve(c) }.report_on_exception = false
    end
  rescue IOError, Errno::EBADF
    nil
  end

  def serve(client)
    line = client.gets or return client.close
    headers = {}
    while (h = client.gets) && h != "\r\n"
      name, value = h.split(":", 2)
      headers[name.downcase] = value.strip
    end
    path = line.split(" ")[1]
    @lock.synchronize { @requests << Request.new(path, headers) }
    case @mode
    when :hang
      @lock.synchronize { @held << client } # kept open, never answered
      return
    when :redirect
      client.write("HTTP/1.1 302 Found\r\nlocation: #{@location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    else
      status, body = @handler ? @handler.call(path, headers) : [@status, @body]
      client.write("HTTP/1.1 #{status} X\r\ncontent-type: application/json\r\ncontent-length: #{body.bytesize}\r\nconnection: close\r\n\r\n#{body}")
    end
    client.close
  rescue IOError, SystemCallError
    nil
  end
end
